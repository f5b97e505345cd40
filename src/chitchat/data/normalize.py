"""Text normalization shared by prepare, the tokenizer and inference.

The same function must run on training data and on a user's question at inference time, or the
model sees text it was never trained on.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the expression helpers only call methods: inference need not import polars
    import polars as pl

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SPACE = re.compile(r"\s+")
# Zero-width and BOM characters survive NFC and make visually equal strings differ.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\x00]")


def normalize_text(text: str, lowercase: bool = False, yo_to_e: bool = False) -> str:
    """Unescape HTML entities, drop tags, NFC, collapse whitespace; optionally lower-case and ё→е."""
    text = html.unescape(html.unescape(text))  # scraped dumps double-escape: &amp;quot;
    text = _TAG.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _SPACE.sub(" ", text).strip()
    if lowercase:
        text = text.lower()
    if yo_to_e:
        text = text.replace("ё", "е").replace("Ё", "Е")
    return text


def match_key(expr: pl.Expr) -> pl.Expr:
    """A comparison key: lower case, ё→е, punctuation and emoji dropped, whitespace collapsed.

    Two texts with the same key read as the same phrase ("Как дела?" and "как дела").
    """
    return (
        expr.str.to_lowercase()
        .str.replace_all("ё", "е", literal=True)
        .str.replace_all(r"[^\w\s]", " ")
        .str.replace_all(r"_", " ", literal=True)
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def word_count(expr: pl.Expr) -> pl.Expr:
    """Number of whitespace-separated words."""
    return expr.str.count_matches(r"\S+")
