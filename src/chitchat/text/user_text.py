"""Text from a user (a terminal, argv, an HTTP body, a Telegram message), made safe for the
tokenizer and for printing before anything reads it.

Python hands invalid UTF-8 from stdin and argv over as lone surrogates (U+DC80-U+DCFF), and a
JSON client can send any lone surrogate as an escape; neither can be encoded, so the tokenizer and
the terminal fail on them. They become U+FFFD, the replacement character. Control characters (C0,
DEL, C1) go; tabs and line breaks become spaces, as normalize_text would make them.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_BREAK = re.compile("[\t\n\r\x0b\x0c\x1c-\x1f\x85]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


def clean_user_text(text: str) -> tuple[str, list[str]]:
    """(the text made safe, what was replaced: "invalid UTF-8", "control characters"; empty when
    nothing was)."""
    found = []
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
        found.append("invalid UTF-8")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        found.append("control characters")
    return _BREAK.sub(" ", text), found


def cleaned(text: str) -> str:
    return clean_user_text(text)[0]


def replaced_note(found: list[str]) -> str:
    """The one line a front end shows when clean_user_text replaced something."""
    return f"(note: {' and '.join(found)} in the input replaced)"
