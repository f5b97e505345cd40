"""Text normalization shared by prepare, the tokenizer and inference.

The same function must run on training data and on a user's question at inference time, or the
model sees text it was never trained on. `normalize_text` is the definition (one string, used at
inference); `normalize_series` computes the same over a polars column for prepare (tests check
equality on tricky inputs and on every Unicode character).
"""

from __future__ import annotations

import functools
import html
import re
import sys
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


# normalize_text's regexes for Rust's regex engine: Python's `\s` is Unicode White_Space plus the
# ASCII separators \x1c-\x1f, which Rust's `\s` lacks.
_WS = r"[\s\x1c-\x1f]"
_TAG_RS = r"</?[A-Za-z][A-Za-z0-9]*(?:" + _WS + r"[^<>]*)?/?>"
_INVISIBLE_RS = r"[\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}\x00]"
_SPACE_RS = _WS + r"{2,}|[^\S ]|[\x1c-\x1f]"  # only runs and non-space whitespace need replacing
# The entities scraped dumps are full of; html.unescape turns exactly these into these.
_ENTITIES = {"&quot;": '"', "&amp;": "&", "&lt;": "<", "&gt;": ">", "&#39;": "'", "&#039;": "'",
             "&#34;": '"', "&apos;": "'", "&nbsp;": "\xa0"}
_ENTITIES_RS = "|".join(re.escape(e) for e in _ENTITIES)
_OTHER_ENTITY_RS = r"&[^\t\n\f <&;]"  # what html.unescape may still change once those are gone
# A row without any of these (or a rare character) is left as it is by every step but the case ones.
_TOUCHED_RS = r"[&<\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}\x00\x1c-\x1f]|[^\S ]|\s\s|^\s|\s$"


@functools.lru_cache(maxsize=1)
def _rare_chars_rs() -> str:
    """A regex class of the characters on which polars and normalize_text might disagree.

    Those Python's Unicode database does not know (polars' tables are newer: their lower case may
    differ), and those NFC may change or combine (NFC quick check not Yes, or a combining class):
    text without any of them is NFC already, so the vectorized path needs no NFC at all.
    """
    # Planes 4-13 hold no characters and 15-16 only private use: rare wholesale (safe either way,
    # a row sent to normalize_text only costs time), which skips most of the slow loop below.
    planes = [cp for lo, hi in ((0, 0x40000), (0xE0000, 0xF0000)) for cp in range(lo, hi)]
    seconds = {0x1161 + i for i in range(21)} | {0x11A8 + i for i in range(27)}  # Hangul V and T jamo
    for cp in planes:
        decomposition = unicodedata.decomposition(chr(cp))
        if decomposition and not decomposition.startswith("<") and decomposition.count(" ") == 1:
            seconds.add(int(decomposition.split()[1], 16))  # may compose with the character before
    ranges: list[list[int]] = []
    for cp in planes:
        ch = chr(cp)
        if (unicodedata.category(ch) == "Cn" or unicodedata.combining(ch) or cp in seconds
                or (not 0xD800 <= cp <= 0xDFFF and not unicodedata.is_normalized("NFC", ch))):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    ranges += [[0x40000, 0xDFFFF], [0xF0000, sys.maxunicode]]
    return "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges) + "]"


def normalize_series(texts: pl.Series, lowercase: bool = False, yo_to_e: bool = False) -> pl.Series:
    """normalize_text over a column, vectorized in polars (Rust regexes, Aho-Corasick replace_many).

    One pass finds the rows any step could change (an `&`, a `<`, an invisible character, whitespace
    other than single spaces between words, a rare character); only those go through the steps.
    Rows polars cannot do exactly go through normalize_text in a Python loop: those with an HTML
    entity beyond the common ones (`&hellip;`, `&#8212;`, `&amp` without `;`...) and those with a
    rare character (see _rare_chars_rs: combining marks, decomposed letters, unassigned code points).
    In scraped Russian text both are a small share; every other row is NFC already.
    """
    out = texts
    if lowercase:
        out = out.str.to_lowercase()
    if yo_to_e:
        out = out.str.replace_all("ё", "е", literal=True).str.replace_all("Ё", "Е", literal=True)
    touched = texts.str.contains(_TOUCHED_RS + "|" + _rare_chars_rs())
    if touched.any():
        rows = touched.arg_true()
        out = out.scatter(rows, _normalize_touched(texts.gather(rows), lowercase, yo_to_e))
    return out


def _normalize_touched(texts: pl.Series, lowercase: bool, yo_to_e: bool) -> pl.Series:
    """Every step of normalize_text, for the rows normalize_series found something to do in."""
    keys, values = list(_ENTITIES), list(_ENTITIES.values())
    slow = texts.str.contains(_rare_chars_rs())
    out = texts
    has_amp = texts.str.contains("&", literal=True)
    if has_amp.any():
        rows = has_amp.arg_true()
        sub = texts.gather(rows)
        once = sub.str.replace_many(keys, values)
        leftover = [t.str.replace_all(_ENTITIES_RS, "").str.contains(_OTHER_ENTITY_RS) for t in (sub, once)]
        slow = slow.scatter(rows, slow.gather(rows) | leftover[0] | leftover[1])
        out = out.scatter(rows, once.str.replace_many(keys, values))  # scraped dumps double-escape
    out = (
        out.str.replace_all(_TAG_RS, " ")
        .str.replace_all(_INVISIBLE_RS, "")
        .str.replace_all(_SPACE_RS, " ")
        .str.strip_chars(" ")
    )
    if lowercase:
        out = out.str.to_lowercase()
    if yo_to_e:
        out = out.str.replace_all("ё", "е", literal=True).str.replace_all("Ё", "Е", literal=True)
    if slow.any():
        rows = slow.arg_true()
        out = out.scatter(rows, [normalize_text(t, lowercase, yo_to_e) for t in texts.gather(rows).to_list()])
    return out


def lower_yo(expr: pl.Expr) -> pl.Expr:
    """Lower case with ё read as е: the case part of match_key (to_lowercase leaves no Ё)."""
    return expr.str.to_lowercase().str.replace_all("ё", "е", literal=True)


def spaced_words(expr: pl.Expr) -> pl.Expr:
    """Every run of characters that are not letters or digits (punctuation, symbols, emoji, `_`,
    whitespace) becomes one space: what match_key and dedup's near key both start from."""
    return expr.str.replace_all(r"[\W_]+", " ")


def match_key(expr: pl.Expr, spaced: bool = False) -> pl.Expr:
    """A comparison key: lower case, ё→е, punctuation and emoji dropped, whitespace collapsed.

    Two texts with the same key read as the same phrase ("Как дела?" and "как дела"). With
    `spaced`, `expr` has been through lower_yo and spaced_words already (dedup shares those passes
    with its near key).
    """
    if spaced:
        return expr.str.strip_chars(" ")
    return spaced_words(lower_yo(expr)).str.strip_chars(" ")


def word_count(expr: pl.Expr) -> pl.Expr:
    """Number of whitespace-separated words."""
    return expr.str.count_matches(r"\S+")
