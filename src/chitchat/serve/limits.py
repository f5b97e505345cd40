"""Caps on what one request may ask of the model, shared by the web app and the Telegram bot.

`ChatService` checks what makes sense for a model (top_p in (0, 1], n <= beam_size, ...); these caps
bound what one request may cost a shared server, and keep numbers that break arithmetic out
(a length penalty of 1e300 overflows, a temperature of 1e-40 turns every logit into -inf).
"""

from __future__ import annotations

from dataclasses import asdict

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import MAX_HISTORY_TURNS, MAX_QUESTION_CHARS, RequestError

# decoding option -> (smallest, largest) a request may set, both inclusive
BOUNDS: dict[str, tuple[float, float]] = {
    "max_new_tokens": (1, 128),
    "min_new_tokens": (0, 128),
    "beam_size": (1, 10),
    "n": (1, 5),
    "no_repeat_ngram_size": (0, 10),
    "length_penalty": (-5.0, 5.0),
    "temperature": (0.01, 10.0),
    "top_k": (0, 100_000),
    "repetition_penalty": (0.01, 10.0),
    "seed": (0, 2**63 - 1),  # torch seeds are 64-bit
    "rerank_k": (0, 50),  # retrieved answers the model scores per question (each one a forward pass)
}
MAX_QUESTION = MAX_QUESTION_CHARS  # characters, as the service counts them
MAX_CATEGORY = 200  # characters of a category name
MAX_HISTORY = MAX_HISTORY_TURNS  # earlier turns (questions and answers) one request may carry
MAX_TURN = 2000  # characters of one earlier turn


def check(decoding: DecodingConfig) -> DecodingConfig:
    """`decoding`, or RequestError naming the first option outside BOUNDS."""
    for name, (low, high) in BOUNDS.items():
        value = getattr(decoding, name)
        if not low <= value <= high:
            raise RequestError(f"decoding.{name} must be in [{low}, {high}] here, got {value!r}")
    return decoding


def as_dict() -> dict:
    """The caps and the decoding defaults, for clients that build forms from them."""
    return {
        "bounds": {name: list(pair) for name, pair in BOUNDS.items()},
        "max_question_chars": MAX_QUESTION,
        "max_category_chars": MAX_CATEGORY,
        "max_history": MAX_HISTORY,
        "max_turn_chars": MAX_TURN,
        "defaults": asdict(DecodingConfig()),
    }
