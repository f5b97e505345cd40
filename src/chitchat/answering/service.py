"""The answering service: load a trained model and its tokenizer once, answer many questions.

The CLI, the web app and the Telegram bot all sit on `ChatService`; it knows nothing about any
of them. Every bad request raises `RequestError` (a ValueError) with one line fit to show a user.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from chitchat.answering.checkpoint import (RETRIEVAL_DIR, checkpoint_file, load_tokenizer, model_from_checkpoint,
                                          read_checkpoint)
from chitchat.answering.decoding import DecodingConfig, StepHook, generate
from chitchat.answering.streaming import AnswerStream
from chitchat.data.normalize import normalize_text
from chitchat.core.errors import InputError
from chitchat.models.base import Seq2Seq, right_pad
from chitchat.text.prompt import encode_sources
from chitchat.text.tokenizer import Tokenizer
from chitchat.text.user_text import cleaned

if TYPE_CHECKING:  # the index module pulls in scipy, polars and scikit-learn: loaded only where used
    from chitchat.answering.retrieval import RetrievalIndex

MAX_QUESTION_CHARS = 1000  # longer requests are refused, not truncated: nobody types that much
MAX_HISTORY_TURNS = 20  # earlier turns a conversation keeps (CLI, web page, bot); the model sees its max_history
DEVICES = ("auto", "cpu", "cuda")


class RequestError(ValueError):
    """A question, category or decoding option the service cannot answer; one line for the user."""


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # the decoder's ranking score (length-normalized log-probability for beam)
    tokens: int = 0  # tokens generated (EOS not counted); retrieval: words of the answer


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


class LanguageModelError(InputError):
    """The model folder holds a language model (model.task lm): ContinuationService serves it."""


class ChatService:
    """A loaded model that answers questions; `answer` is safe to call from several threads."""

    task = "seq2seq"  # a question in, an answer out (ContinuationService: lm)

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, max_src_len: int, device: torch.device,
                 lowercase: bool = False, yo_to_e: bool = False, max_history: int = 0,
                 condition_field: str = "category", index: "RetrievalIndex | Path | None" = None,
                 max_tgt_len: int = 48):
        self.model = model
        self.tokenizer = tokenizer
        self.max_src_len = max_src_len
        self.max_tgt_len = max_tgt_len  # retrieved answers are scored as training cut them (rerank_k)
        self.device = device
        self.lowercase = lowercase  # prepare's normalization, so questions look like training data
        self.yo_to_e = yo_to_e
        self.max_history = max(0, max_history)  # earlier turns the model was trained to read (0: none)
        self.condition_field = condition_field  # what a "category" is here: category or speaker (a character)
        self.conditioned = bool(model.cfg.condition)  # False: categories cannot change the answers
        # The train pairs' TF-IDF index saved beside the model (None: rerank_k unavailable). A folder is
        # read on the first rerank request, so a plain answer never loads scikit-learn or polars.
        self._index = index
        self._index_lock = threading.Lock()
        self._set_categories(tokenizer.categories)
        self._lock = threading.Lock()  # one decode at a time: the model and its caches are shared

    def _set_categories(self, names) -> None:
        self._known = set(names)
        self._by_key = {_category_key(name): name for name in names}

    @property
    def model_type(self) -> str:
        return self.model.cfg.type

    @property
    def index(self) -> "RetrievalIndex | None":
        with self._index_lock:
            if isinstance(self._index, Path):
                from chitchat.answering.retrieval import RetrievalIndex

                self._index = RetrievalIndex.load(self._index)
        return self._index

    @classmethod
    def load(cls, model_dir: str | Path = "data/model", device: str = "auto") -> "ChatService":
        """Read `model_dir` as the train stage writes it: model.pt plus the tokenizer folder.

        Raises chitchat.core.errors.InputError when there is no trained model there.
        """
        dev = resolve_device(device)
        ckpt = read_checkpoint(model_dir, dev)
        folder = checkpoint_file(model_dir).parent
        prepare = ckpt.get("prepare") or {}  # older checkpoints do not record it: prepare's defaults
        normalization = (bool(prepare.get("lowercase", False)), bool(prepare.get("yo_to_e", False)),
                         int(prepare.get("max_history", 0)), str(prepare.get("condition_field", "category")))
        index_dir = folder / ckpt.get("retrieval_dir", RETRIEVAL_DIR)
        if ckpt["model_config"].get("type") == "retrieval":
            from chitchat.answering.retrieval import RetrievalIndex

            return RetrievalChatService(RetrievalIndex.load(index_dir), *normalization)
        if ckpt["model_config"].get("task") == "lm":  # a language model continues text; it answers nothing
            raise LanguageModelError(model_dir, "this is a style-continuation model (model.task lm): "
                                                "use `chitchat continue`")
        model = model_from_checkpoint(model_dir, ckpt, dev)  # the dict read above: model.pt is loaded once
        tokenizer = load_tokenizer(model_dir, ckpt)
        if ckpt["model_config"]["type"] == "hf":  # a fine-tuned pretrained LM: its prompt is text
            cls = HFChatService
        index = index_dir if index_dir.is_dir() else None  # older models have none
        return cls(model, tokenizer, int(ckpt["max_src_len"]), dev, *normalization, index=index,
                   max_tgt_len=int(ckpt.get("max_tgt_len", 48)))

    @property
    def categories(self) -> list[str]:
        """Category names the model knows, sorted."""
        return sorted(self._known)

    # -- validation ------------------------------------------------------------------------------
    def resolve_category(self, category: str | None) -> str | None:
        """The model's own name for `category` (None or blank: no category)."""
        category = None if category is None else cleaned(category)
        if category is None or not category.strip():
            return None
        if category in self._known:
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
        if decoding.rerank_k and self._index is None:
            raise RequestError("decoding.rerank_k needs the retrieval index beside the model "
                               "(data/model/retrieval): retrain with `dvc repro -f train`")
        limit = self.model.cfg.max_len
        # CNN and transformer decoders have a position table (BOS + answer); RNNs can go on for ever.
        if self.model.cfg.type in ("cnn", "transformer") and decoding.max_new_tokens > limit:
            raise RequestError(f"decoding.max_new_tokens must be at most {limit} for this model, "
                               f"got {decoding.max_new_tokens}")
        return decoding

    def _question(self, question: str) -> str:
        if not isinstance(question, str):
            raise RequestError(f"question must be text, got {type(question).__name__}")
        text = normalize_text(cleaned(question), self.lowercase, self.yo_to_e)
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
        return [normalize_text(cleaned(turn), self.lowercase, self.yo_to_e) for turn in turns]

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
                     histories: Sequence[Sequence[str] | None] | None = None,
                     streams: Sequence[AnswerStream | None] | None = None) -> list[Reply]:
        """Answer several questions in one decoder call; one Reply per question, in order.

        `categories` gives one category per question (None: none for all). `histories` gives the
        earlier turns of each conversation, oldest first (None: none); the model reads the last
        `max_history` of them (recorded by training; 0, and checkpoints older than history, read none).
        `streams` (one per question, or None) see greedy and nucleus answers token by token and may
        stop them (chitchat.answering.streaming); other strategies hand them their answers whole.
        """
        decoding = self.check_decoding(decoding or DecodingConfig())
        texts, names, contexts = self._inputs(questions, categories, histories)
        if not texts:
            return []
        rows, truncated, lengths = self._sources(texts, names, contexts)
        hook = step_hook(streams, decoding, self.tokenizer.eos_id)  # None for rerank and beam: no token steps
        if decoding.rerank_k:  # retrieve-then-rank: chitchat.answering.rerank
            from chitchat.answering.rerank import rerank  # scikit-learn and polars only where they are used

            with self._lock:
                neutral = self._sources([""] * len(texts), names)[0] if decoding.rerank_mmi else None
                ranked = rerank(self.model, self.tokenizer, self.index, rows, texts, names, contexts, decoding,
                                self.max_tgt_len, self.device, neutral)
            answers = [[Answer(c.text, c.score, c.tokens) for c in row] for row in ranked]
        else:
            with self._lock, torch.inference_mode():
                hyps = generate(self.model, right_pad(rows, self.tokenizer.pad_id).to(self.device), decoding,
                                self.tokenizer.bos_id, self.tokenizer.eos_id, banned_ids=self.tokenizer.never_generated,
                                on_step=hook)
            answers = [[Answer(self.tokenizer.decode(h.ids), float(h.score), len(h.ids))
                        for h in sorted(row, key=lambda h: h.score, reverse=True)] for row in hyps]
        finish_streams(streams, answers, stepped=hook is not None, max_tokens=decoding.max_new_tokens)
        return [Reply(ans, name, text, cut, n_tok, len(context))
                for text, name, cut, n_tok, ans, context in zip(texts, names, truncated, lengths, answers, contexts)]

    def _inputs(self, questions: Sequence[str], categories, histories) -> tuple[list[str], list, list[list[str]]]:
        """Normalized questions, resolved categories and the history turns the model reads."""
        if categories is None:
            categories = [None] * len(questions)
        if len(categories) != len(questions):
            raise RequestError(f"{len(questions)} questions but {len(categories)} categories")
        if histories is None:
            histories = [None] * len(questions)
        if len(histories) != len(questions):
            raise RequestError(f"{len(questions)} questions but {len(histories)} histories")
        return ([self._question(q) for q in questions], [self.resolve_category(c) for c in categories],
                [self._history(h) for h in histories])

    def _encode(self, texts: list[str], names: list[str | None], histories: list[list[str]] | None = None
                ) -> tuple[torch.Tensor, list[bool], list[int]]:
        """`_sources` right-padded into one (batch, src_len) tensor."""
        rows, truncated, lengths = self._sources(texts, names, histories)
        return right_pad(rows, self.tokenizer.pad_id), truncated, lengths

    def _sources(self, texts: list[str], names: list[str | None], histories: list[list[str]] | None = None
                 ) -> tuple[list[list[int]], list[bool], list[int]]:
        """Source ids as training built them (chitchat.text.prompt), whether each question was cut,
        and their lengths: [category] turn <sep> ... <sep> question [eos], cut to max_src_len from
        the oldest side."""
        sources = encode_sources(self.tokenizer, texts, names, histories, self.max_src_len, self.max_history,
                                 self.conditioned)
        rows = [s.ids for s in sources]
        return rows, [s.truncated for s in sources], [len(r) for r in rows]


def step_hook(streams: Sequence[AnswerStream | None] | None, decoding: DecodingConfig, eos_id: int
              ) -> StepHook | None:
    """The decoding hook that feeds every token of answer slot (question * copies + copy) to its stream."""
    if not streams or not any(streams) or decoding.strategy == "beam" or decoding.rerank_k:
        return None
    copies = decoding.n if decoding.strategy == "nucleus" else 1

    def hook(slots: list[int], tokens: list[int]) -> set[int]:
        stop = set()
        for slot, token in zip(slots, tokens):
            stream = streams[slot // copies]
            if stream is not None and stream.token(slot % copies, token, token == eos_id):
                stop.add(slot)
        return stop

    return hook


def finish_streams(streams: Sequence[AnswerStream | None] | None, answers: list[list[Answer]], stepped: bool,
                   max_tokens: int) -> None:
    """After a decoder call: streams fed token by token (`stepped`: a step_hook ran) end what is
    open; the others get their answers whole."""
    for stream, found in zip(streams or (), answers):
        if stream is None:
            continue
        if not stepped:
            stream.whole([(a.text, a.tokens) for a in found], max_tokens)
        stream.close(max_tokens)


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

    def _sources(self, texts: list[str], names: list[str | None], histories=None):
        """Prompt ids, whether each question was cut, prompt lengths."""
        names = [name if self.conditioned else None for name in names]
        rows = self.tokenizer.encode_sources(texts, names, histories or [None] * len(texts), self.max_src_len)
        return [ids for ids, _ in rows], [cut for _, cut in rows], [len(ids) for ids, _ in rows]


class RetrievalChatService(ChatService):
    """ChatService for model type retrieval: each answer is the answer of a retrieved train pair.

    Of the decoding options only `n` applies (the n best pairs); the others steer a generator.
    """

    def __init__(self, index: "RetrievalIndex", lowercase: bool = False, yo_to_e: bool = False,
                 max_history: int = 0, condition_field: str = "category"):
        self.model = None
        self.tokenizer = None
        self._index = index
        self._index_lock = threading.Lock()
        self.device = torch.device("cpu")
        self.max_src_len = self.max_tgt_len = 0
        self.lowercase, self.yo_to_e = lowercase, yo_to_e
        self.max_history = max(0, min(max_history, index.max_history))
        self.condition_field = condition_field
        self.conditioned = index.cfg.category_mode != "off"
        self._set_categories(index.categories)
        self._lock = threading.Lock()

    @property
    def model_type(self) -> str:
        return "retrieval"

    def check_decoding(self, decoding: DecodingConfig) -> DecodingConfig:
        try:
            return decoding.validate()
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def answer_batch(self, questions, categories=None, decoding=None, histories=None, streams=None) -> list[Reply]:
        decoding = self.check_decoding(decoding or DecodingConfig())
        texts, names, contexts = self._inputs(questions, categories, histories)
        if not texts:
            return []
        with self._lock:
            hits = self.index.search(texts, names if self.conditioned else None, contexts, k=decoding.n)
        answers = [[Answer(h.answer, h.score, len(h.answer.split())) for h in found] for found in hits]
        finish_streams(streams, answers, stepped=False, max_tokens=decoding.max_new_tokens)
        return [Reply(found, name, text, False, len(text.split()), len(context))
                for text, name, found, context in zip(texts, names, answers, contexts)]
