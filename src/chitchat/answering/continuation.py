"""Style continuation: load a language model (`model.task: lm`) once and continue texts with it.

`chitchat continue` sits on ContinuationService, and evaluate's examples on `continue_texts`. A
prompt is normalized as prepare normalized the training paragraphs, then read as the start of a
paragraph: BOS and its tokens. A prompt longer than the model's context keeps only its end, as
training windows start mid-paragraph. The decoding options are chitchat.answering.decoding's, unchanged.
Every bad request raises RequestError (a ValueError) with one line fit to show a user.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from chitchat.answering.checkpoint import load_checkpoint, load_tokenizer
from chitchat.data.normalize import normalize_text
from chitchat.text.user_text import cleaned
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.core.errors import InputError
from chitchat.answering.service import Answer, Reply, RequestError, finish_streams, resolve_device, step_hook
from chitchat.answering.streaming import AnswerStream
from chitchat.models.base import Seq2Seq, right_pad
from chitchat.text.tokenizer import Tokenizer

MAX_PROMPT_CHARS = 20_000  # longer requests are refused: only the model's context is read anyway


@dataclass(frozen=True)
class Continuation:
    text: str  # the prompt (normalized) followed by the continuation
    continuation: str  # the generated part alone, with its leading space where it starts a word
    score: float  # the decoder's ranking score (length-normalized log-probability for beam)
    new_tokens: int  # tokens generated (EOS not counted)
    prompt_tokens: int  # tokens of the prompt the model read, BOS included
    truncated: bool  # the prompt was longer than the model's context: only its end was read


def encode_prompts(tok: Tokenizer, texts: Sequence[str], context: int) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
    """Right-padded prompts (batch, len): [bos] ids, or the last `context` ids when longer."""
    rows, cut = [], []
    for ids in tok.encode_batch(list(texts)):
        ids = [tok.bos_id] + ids
        cut.append(len(ids) > context)
        rows.append(ids[-context:])
    return right_pad(rows, tok.pad_id), rows, cut


def _new_text(tok: Tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text `new_ids` add after the prompt (decoded together, so a word split across stays whole)."""
    head, full = tok.decode(prompt_ids), tok.decode(prompt_ids + new_ids)
    if full.startswith(head):
        return full[len(head):]
    return " " + tok.decode(new_ids)  # a decoder that rewrites the prompt's end: fall back to a word break


@torch.no_grad()
def continue_texts(model: Seq2Seq, tok: Tokenizer, texts: Sequence[str], decoding: DecodingConfig,
                   device, batch_size: int = 16) -> list[list[Continuation]]:
    """decoding.n continuations of each (already normalized) text, best first."""
    results: list[list[Continuation]] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        src, rows, cut = encode_prompts(tok, batch, model.context)
        hyps = generate(model, src.to(device), decoding, tok.bos_id, tok.eos_id, tok.never_generated)
        for text, ids, was_cut, ranked in zip(batch, rows, cut, hyps):
            new = [_new_text(tok, ids, h.ids) for h in ranked]
            results.append([Continuation(text + piece, piece, float(h.score), len(h.ids), len(ids), was_cut)
                            for piece, h in zip(new, ranked)])
    return results


class ContinuationService:
    """A loaded language model that continues texts; `continue_text` is safe to call from several threads.

    `answer_batch` gives it ChatService's shape, so `chitchat serve` batches and streams its
    continuations (/v1/completions) as it does a chit-chat model's answers: each question is a
    prompt, each answer the text that follows it.
    """

    task = "lm"  # it continues texts: no questions, categories or history
    model_type = "lm"
    categories: list[str] = []
    conditioned = False
    condition_field = "category"
    max_history = 0

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, device: torch.device,
                 lowercase: bool = False, yo_to_e: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.lowercase = lowercase  # prepare's normalization, so prompts look like the training text
        self.yo_to_e = yo_to_e
        self._lock = threading.Lock()  # one decode at a time: the model is shared

    @classmethod
    def load(cls, model_dir: str | Path = "data/model", device: str = "auto") -> "ContinuationService":
        """Read `model_dir` as the train stage writes it; InputError when it holds no language model."""
        dev = resolve_device(device)
        model, ckpt = load_checkpoint(model_dir, dev)
        task = ckpt["model_config"].get("task", "seq2seq")
        if task != "lm":
            raise InputError(model_dir, f"this is a chit-chat model (model.task {task}), not a language model: "
                                        "use `chitchat ask`, or train with model.task lm")
        prepare = ckpt.get("prepare") or {}
        return cls(model, load_tokenizer(model_dir, ckpt), dev, bool(prepare.get("lowercase", False)),
                   bool(prepare.get("yo_to_e", False)))

    def check_decoding(self, decoding: DecodingConfig) -> DecodingConfig:
        try:
            return decoding.validate()
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def _prompt(self, text: str) -> str:
        if not isinstance(text, str):
            raise RequestError(f"text must be a string, got {type(text).__name__}")
        text = normalize_text(cleaned(text), self.lowercase, self.yo_to_e)
        if not text:
            raise RequestError("text is empty: give the beginning of a text to continue")
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(f"text is too long: {len(text)} characters, at most {MAX_PROMPT_CHARS}")
        return text

    def continue_text(self, text: str, decoding: DecodingConfig | None = None) -> list[Continuation]:
        """decoding.n continuations of `text`, best first."""
        decoding = self.check_decoding(decoding or DecodingConfig())
        prompt = self._prompt(text)
        with self._lock, torch.inference_mode():
            return continue_texts(self.model, self.tokenizer, [prompt], decoding, self.device)[0]

    def resolve_category(self, category: str | None) -> None:
        if category is not None and category.strip():
            raise RequestError("a language model has no categories: leave category out")
        return None

    def answer_batch(self, questions: Sequence[str], categories=None, decoding: DecodingConfig | None = None,
                     histories=None, streams: Sequence[AnswerStream | None] | None = None) -> list[Reply]:
        """The continuations of several prompts in one decoder call, as ChatService Replies."""
        decoding = self.check_decoding(decoding or DecodingConfig())
        for category in categories or ():
            self.resolve_category(category)
        if any(histories or ()):
            raise RequestError("a language model continues one text: send it whole as the prompt, without history")
        prompts = [self._prompt(q) for q in questions]
        src, rows, cut = encode_prompts(self.tokenizer, prompts, self.model.context)
        for stream, ids in zip(streams or (), rows):
            if stream is not None:  # a continuation's text is what follows its prompt
                stream.decode_with(lambda new, ids=ids: _new_text(self.tokenizer, ids, new))
        hook = step_hook(streams, decoding, self.tokenizer.eos_id)
        with self._lock, torch.inference_mode():
            hyps = generate(self.model, src.to(self.device), decoding, self.tokenizer.bos_id, self.tokenizer.eos_id,
                            self.tokenizer.never_generated, on_step=hook)
        answers = [[Answer(_new_text(self.tokenizer, ids, h.ids), float(h.score), len(h.ids)) for h in ranked]
                   for ids, ranked in zip(rows, hyps)]
        finish_streams(streams, answers, stepped=hook is not None, max_tokens=decoding.max_new_tokens)
        return [Reply(found, None, prompt, was_cut, len(ids)) for found, prompt, was_cut, ids
                in zip(answers, prompts, cut, rows)]
