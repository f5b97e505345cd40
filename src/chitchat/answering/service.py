"""The answering service: load a trained model and its tokenizer once, answer many questions.

The CLI, the web app and the Telegram bot all sit on `ChatService`; it knows nothing about any
of them. Every bad request raises `RequestError` (a ValueError) with one line fit to show a user.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from chitchat.answering.checkpoint import load_checkpoint, load_tokenizer
from chitchat.data.normalize import normalize_text
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.core.errors import InputError
from chitchat.models.base import Seq2Seq, right_pad
from chitchat.text.prompt import encode_sources
from chitchat.text.tokenizer import Tokenizer

MAX_QUESTION_CHARS = 1000  # longer requests are refused, not truncated: nobody types that much
MAX_HISTORY_TURNS = 20  # earlier turns a conversation keeps (CLI, web page, bot); the model sees its max_history
DEVICES = ("auto", "cpu", "cuda")


class RequestError(ValueError):
    """A question, category or decoding option the service cannot answer; one line for the user."""


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # the decoder's ranking score (length-normalized log-probability for beam)


@dataclass(frozen=True)
class Reply:
    """The answers to one question and how the question reached the model."""

    answers: list[Answer]
    category: str | None  # the model's own spelling of the category, None when none was given
    question: str  # the question after normalization, as the model saw it (before truncation)
    truncated: bool  # the question was cut to the model's max_src_len tokens
    src_tokens: int  # tokens the model saw, category, history turns and EOS included
    history_turns: int = 0  # earlier turns given to the model: at most its max_history (the oldest may be cut to fit)


def _category_key(name: str) -> str:
    """Forgiving comparison key: case, ё/е and whitespace do not matter."""
    return "".join(normalize_text(name).casefold().replace("ё", "е").split())


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise RequestError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RequestError("device cuda was asked for, but CUDA is not available here")
    return torch.device(name)


class ChatService:
    """A loaded model that answers questions; `answer` is safe to call from several threads."""

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, max_src_len: int, device: torch.device,
                 lowercase: bool = False, yo_to_e: bool = False, max_history: int = 0,
                 condition_field: str = "category"):
        self.model = model
        self.tokenizer = tokenizer
        self.max_src_len = max_src_len
        self.device = device
        self.lowercase = lowercase  # prepare's normalization, so questions look like training data
        self.yo_to_e = yo_to_e
        self.max_history = max(0, max_history)  # earlier turns the model was trained to read (0: none)
        self.condition_field = condition_field  # what a "category" is here: category or speaker (a character)
        self.conditioned = bool(model.cfg.condition)  # False: categories cannot change the answers
        self._by_key = {_category_key(name): name for name in tokenizer.categories}
        self._lock = threading.Lock()  # one decode at a time: the model and its caches are shared

    @classmethod
    def load(cls, model_dir: str | Path = "data/model", device: str = "auto") -> "ChatService":
        """Read `model_dir` as the train stage writes it: model.pt plus the tokenizer folder.

        Raises chitchat.core.errors.InputError when there is no trained model there.
        """
        dev = resolve_device(device)
        model, ckpt = load_checkpoint(model_dir, dev)
        if ckpt["model_config"].get("task") == "lm":  # a language model continues text; it answers nothing
            raise InputError(model_dir, "this is a style-continuation model (model.task lm): use `chitchat continue`")
        tokenizer = load_tokenizer(model_dir, ckpt)
        if ckpt["model_config"]["type"] == "hf":  # a fine-tuned pretrained LM: its prompt is text
            cls = HFChatService
        prepare = ckpt.get("prepare") or {}  # older checkpoints do not record it: prepare's defaults
        return cls(model, tokenizer, int(ckpt["max_src_len"]), dev,
                   bool(prepare.get("lowercase", False)), bool(prepare.get("yo_to_e", False)),
                   int(prepare.get("max_history", 0)), str(prepare.get("condition_field", "category")))

    @property
    def categories(self) -> list[str]:
        """Category names the model knows, sorted."""
        return sorted(self.tokenizer.categories)

    # -- validation ------------------------------------------------------------------------------
    def resolve_category(self, category: str | None) -> str | None:
        """The model's own name for `category` (None or blank: no category)."""
        if category is None or not category.strip():
            return None
        if category in self.tokenizer.categories:
            return category
        name = self._by_key.get(_category_key(category))
        if name is None:
            known = "; ".join(self.categories) or "none"
            raise RequestError(f"unknown category {category.strip()!r}; known: {known}")
        return name

    def check_decoding(self, decoding: DecodingConfig) -> DecodingConfig:
        try:
            decoding.validate()
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        limit = self.model.cfg.max_len
        # CNN and transformer decoders have a position table (BOS + answer); RNNs can go on for ever.
        if self.model.cfg.type in ("cnn", "transformer") and decoding.max_new_tokens > limit:
            raise RequestError(f"decoding.max_new_tokens must be at most {limit} for this model, "
                               f"got {decoding.max_new_tokens}")
        return decoding

    def _question(self, question: str) -> str:
        if not isinstance(question, str):
            raise RequestError(f"question must be text, got {type(question).__name__}")
        text = normalize_text(question, self.lowercase, self.yo_to_e)
        if not text:
            raise RequestError("question is empty")
        if len(text) > MAX_QUESTION_CHARS:
            raise RequestError(f"question is too long: {len(text)} characters, at most {MAX_QUESTION_CHARS}")
        return text

    def _history(self, history) -> list[str]:
        """The turns the model reads: the last max_history of `history`, normalized like questions."""
        if history is None:
            return []
        if isinstance(history, str) or not isinstance(history, Sequence):
            raise RequestError(f"history must be a list of earlier turns, got {type(history).__name__}")
        if not all(isinstance(turn, str) for turn in history):
            raise RequestError("history must hold text turns only")
        turns = list(history)[-self.max_history:] if self.max_history else []
        return [normalize_text(turn, self.lowercase, self.yo_to_e) for turn in turns]

    # -- answering -------------------------------------------------------------------------------
    def answer(self, question: str, category: str | None = None, decoding: DecodingConfig | None = None,
               history: Sequence[str] | None = None) -> list[Answer]:
        """Answers to one question, best first (decoding.n of them)."""
        return self.reply(question, category, decoding, history).answers

    def reply(self, question: str, category: str | None = None, decoding: DecodingConfig | None = None,
              history: Sequence[str] | None = None) -> Reply:
        """Like `answer`, with the resolved category and whether the question was truncated."""
        return self.answer_batch([question], [category], decoding, [history])[0]

    def answer_batch(self, questions: Sequence[str], categories: Sequence[str | None] | None = None,
                     decoding: DecodingConfig | None = None,
                     histories: Sequence[Sequence[str] | None] | None = None) -> list[Reply]:
        """Answer several questions in one decoder call; one Reply per question, in order.

        `categories` gives one category per question (None: none for all). `histories` gives the
        earlier turns of each conversation, oldest first (None: none); the model reads the last
        `max_history` of them (recorded by training; 0, and checkpoints older than history, read none).
        """
        decoding = self.check_decoding(decoding or DecodingConfig())
        if categories is None:
            categories = [None] * len(questions)
        if len(categories) != len(questions):
            raise RequestError(f"{len(questions)} questions but {len(categories)} categories")
        if not questions:
            return []
        if histories is None:
            histories = [None] * len(questions)
        if len(histories) != len(questions):
            raise RequestError(f"{len(questions)} questions but {len(histories)} histories")
        texts = [self._question(q) for q in questions]
        names = [self.resolve_category(c) for c in categories]
        contexts = [self._history(h) for h in histories]
        src, truncated, lengths = self._encode(texts, names, contexts)
        with self._lock, torch.inference_mode():
            hyps = generate(self.model, src.to(self.device), decoding, self.tokenizer.bos_id,
                            self.tokenizer.eos_id, banned_ids=self.tokenizer.never_generated)
        replies = []
        for text, name, cut, n_tok, row, context in zip(texts, names, truncated, lengths, hyps, contexts):
            ranked = sorted(row, key=lambda h: h.score, reverse=True)
            answers = [Answer(self.tokenizer.decode(h.ids), float(h.score)) for h in ranked]
            replies.append(Reply(answers, name, text, cut, n_tok, len(context)))
        return replies

    def _encode(self, texts: list[str], names: list[str | None], histories: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, list[bool], list[int]]:
        """Right-padded sources (batch, src_len) as training built them (chitchat.text.prompt):
        [category] turn <sep> ... <sep> question [eos], cut to max_src_len from the oldest side."""
        tok = self.tokenizer
        sources = encode_sources(tok, texts, names, histories, self.max_src_len, self.max_history, self.conditioned)
        rows, truncated = [s.ids for s in sources], [s.truncated for s in sources]
        return right_pad(rows, tok.pad_id), truncated, [len(r) for r in rows]


class HFChatService(ChatService):
    """ChatService for model type hf: the prompt is text (chitchat.text.hf_tokenizer), not category tokens."""

    def check_decoding(self, decoding: DecodingConfig) -> DecodingConfig:
        decoding = super().check_decoding(decoding)
        # absolute position tables (GPT-2) end: prompt + <bos> + answer must fit
        limit = getattr(self.model.lm.config, "max_position_embeddings", None)
        if limit and self.max_src_len + 1 + decoding.max_new_tokens > limit:
            raise RequestError(f"decoding.max_new_tokens must be at most {limit - self.max_src_len - 1} "
                               f"for this model, got {decoding.max_new_tokens}")
        return decoding

    def _encode(self, texts: list[str], names: list[str | None], histories=None):
        """Right-padded prompts (batch, src_len), whether each question was cut, prompt lengths."""
        tok = self.tokenizer
        names = [name if self.conditioned else None for name in names]
        rows = tok.encode_sources(texts, names, histories or [None] * len(texts), self.max_src_len)
        return right_pad([ids for ids, _ in rows], tok.pad_id), [cut for _, cut in rows], [len(ids) for ids, _ in rows]
