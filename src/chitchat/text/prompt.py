"""The model's source sequence, built by this one module for training, evaluation and serving:

    [condition] h_1 <sep> h_2 <sep> ... <sep> h_k <sep> question <eos>

`condition` is the category (or, with prepare.condition_field speaker, the answering character)
token, or the shared unknown-category token when the model is unconditioned or none is given.
`h_1 .. h_k` are the most recent `max_history` earlier turns, oldest first; without history the
source is `[condition] question <eos>`, as before history existed. When the whole does not fit
`max_len`, the oldest context tokens go first: the question is cut (from its end) only when it
alone overflows, so it always survives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Example:
    """One training pair as ids: src = the source above; tgt = [bos] answer [eos]."""

    src: list[int]
    tgt: list[int]


@dataclass(frozen=True)
class Source:
    """One encoded source and what truncation did to it."""

    ids: list[int]
    truncated: bool  # the question itself was cut
    turns: int  # earlier turns the model sees, wholly or in part (separators kept)


def recent_turns(history: Sequence[str] | None, max_history: int | None) -> list[str]:
    """The last `max_history` turns of `history` (None: all of them; 0 or less: none)."""
    if not history or (max_history is not None and max_history <= 0):
        return []
    turns = list(history)
    return turns if max_history is None else turns[-max_history:]


def build_source(lead: int, question: list[int], turns: Sequence[list[int]], sep_id: int, eos_id: int,
                 max_len: int) -> Source:
    """`[lead] turns joined and ended by sep_id, question, eos_id`, at most `max_len` (>= 3) ids."""
    room = max_len - 2  # lead and EOS always stay
    q = question[:room]
    budget = room - len(q)
    context: list[int] = []
    for turn in turns:
        context += turn + [sep_id]
    context = context[max(0, len(context) - budget):] if budget > 0 else []  # the oldest tokens go first
    if context and context[0] == sep_id:  # a separator whose turn was cut away entirely
        context = context[1:]
    return Source([lead] + context + q + [eos_id], len(question) > room, context.count(sep_id))


def encode_sources(tok, questions: Sequence[str], categories: Sequence[str | None],
                   histories: Sequence[Sequence[str] | None] | None, max_len: int,
                   max_history: int | None = None, condition: bool = True) -> list[Source]:
    """Encode many sources at once with `tok` (chitchat.text.tokenizer.Tokenizer); texts as given.

    A None or empty category, or `condition` False, leads with the unknown-category token.
    `max_history` None keeps every turn given (training data: prepare already capped them).
    """
    histories = histories if histories is not None else [None] * len(questions)
    if not len(questions) == len(categories) == len(histories):
        raise ValueError(f"{len(questions)} questions, {len(categories)} categories, {len(histories)} histories")
    kept = [recent_turns(h, max_history) for h in histories]
    q_ids = tok.encode_batch(list(questions))
    flat = tok.encode_batch([t for turns in kept for t in turns]) if any(kept) else []
    out, at = [], 0
    for q, cat, turns in zip(q_ids, categories, kept):
        lead = tok.category_id(cat) if condition and cat else tok.unknown_category_id
        out.append(build_source(lead, q, flat[at : at + len(turns)], tok.sep_id, tok.eos_id, max_len))
        at += len(turns)
    return out
