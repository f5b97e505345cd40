"""Answers as their tokens arrive: stop strings, the text safe to show so far, and why each ended.

A server that streams (chitchat.serve.openai_api) hands the service one `AnswerStream` per
request; greedy and nucleus decoding (chitchat.answering.decoding's StepHook) push every chosen
token into it from the decoding thread, and it passes each new piece of text to its `sink`. A
non-streamed request goes through the same object without a sink, so both give the same text:
the stream's pieces joined are the whole answer.

Two things keep a piece from being shown at once. A stop string: the text is cut where one
starts (the stop string itself is never shown), so a tail that could be the start of one waits
until the next token decides. And a character still being spelled: a byte-level tokenizer
decodes half a UTF-8 character as U+FFFD until its other bytes come.
"""

from __future__ import annotations

from typing import Callable, Sequence

FINISH_STOP, FINISH_LENGTH = "stop", "length"  # OpenAI's finish_reason values
Sink = Callable[[int, str, "str | None"], None]  # (choice index, new text, finish reason or None)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string in it, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _held_tail(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` must wait: a half-decoded character, or the
    longest end that is the beginning of a stop string."""
    keep = len(text) - len(text.rstrip("\ufffd"))
    rest = text[: len(text) - keep]
    longest = max((n for s in stop for n in range(min(len(s) - 1, len(rest)), 0, -1) if rest.endswith(s[:n])),
                  default=0)
    return keep + longest


class ChoiceText:
    """One answer's text as its tokens arrive; `push` returns what may be shown now."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []  # the generated tokens (EOS not among them)
        self.tokens = 0  # tokens the model generated, the EOS that ended it included
        self.text = ""  # the answer so far (final once `finish` is set)
        self.shown = ""  # what has been handed out: always a beginning of `text` once finished
        self.finish: str | None = None

    def push(self, token: int, eos: bool) -> str:
        """Take one generated token; the new text to show ('' while it waits)."""
        if self.finish is not None:
            return ""
        self.tokens += 1
        if eos:
            return self._end(FINISH_STOP)
        self.ids.append(token)
        self.text, stopped = cut_at_stop(self.decode(self.ids), self.stop)
        if stopped:
            return self._end(FINISH_STOP)
        safe = self.text[: len(self.text) - _held_tail(self.text, self.stop)]
        return self._show(safe)

    def end(self, limit_reached: bool) -> str:
        """The answer ended without EOS or stop string (max_tokens, or its client left): the rest."""
        if self.finish is not None:
            return ""
        return self._end(FINISH_LENGTH if limit_reached else FINISH_STOP)

    def whole(self, text: str, tokens: int, limit_reached: bool) -> str:
        """A decoder that has no token steps (beam search, rerank, retrieval) gives the answer whole."""
        self.tokens = tokens
        self.text, stopped = cut_at_stop(text, self.stop)
        return self._end(FINISH_STOP if stopped or not limit_reached else FINISH_LENGTH)

    def _end(self, reason: str) -> str:
        self.finish = reason
        if self.text.startswith(self.shown):
            return self._show(self.text)
        # a decoder that rewrote shown text (never seen with our tokenizers): what was shown stands
        self.text = self.shown
        return ""

    def _show(self, safe: str) -> str:
        if not safe.startswith(self.shown) or len(safe) == len(self.shown):
            return ""
        piece, self.shown = safe[len(self.shown):], safe
        return piece


class AnswerStream:
    """The n answers of one request, fed token by token from the decoding thread.

    `token` is the decoding hook's view of one answer slot; it answers True when that answer
    should stop (its stop string came, or `cancel` was called: the client left). `sink`, when
    given, gets every new piece and every finish, in order, from the decoding thread.
    """

    def __init__(self, decode: Callable[[list[int]], str], n: int = 1, stop: Sequence[str] = (),
                 sink: Sink | None = None):
        self.choices = [ChoiceText(decode, stop) for _ in range(n)]
        self.sink = sink
        self.cancelled = False

    def decode_with(self, decode: Callable[[list[int]], str]) -> None:
        """Read the tokens with `decode` instead (a continuation's text follows its own prompt)."""
        for choice in self.choices:
            choice.decode = decode

    def cancel(self) -> None:
        """Stop generating for this request at the next token (safe from any thread)."""
        self.cancelled = True

    def token(self, index: int, token: int, eos: bool) -> bool:
        choice = self.choices[index]
        if self.cancelled:
            self._tell(index, choice.end(limit_reached=False))
            return True
        piece = choice.push(token, eos)
        self._tell(index, piece)
        return choice.finish is not None

    def close(self, max_tokens: int) -> None:
        """After decoding: every answer still open ended at the length limit (or was cut short)."""
        for index, choice in enumerate(self.choices):
            if choice.finish is None:
                self._tell(index, choice.end(limit_reached=choice.tokens >= max_tokens and not self.cancelled))

    def whole(self, answers: Sequence[tuple[str, int]], max_tokens: int) -> None:
        """Answers decided at once (beam, rerank, retrieval): (text, tokens) per choice, best first."""
        for index, (choice, (text, tokens)) in enumerate(zip(self.choices, answers)):
            self._tell(index, choice.whole(text, tokens, tokens >= max_tokens))

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def _tell(self, index: int, piece: str) -> None:
        choice = self.choices[index]
        if self.sink is not None and (piece or choice.finish is not None):
            self.sink(index, piece, choice.finish)
