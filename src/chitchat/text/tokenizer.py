"""BPE tokenizer training and loading, with special tokens and one token per category.

Two backends behind one class: HF `tokenizers` (default; Metaspace + Punctuation pre-tokenizer with
the Metaspace decoder, so decoding gives the normalized text back: the `Whitespace` pre-tokenizer
could not) and `sentencepiece` (BPE with byte fallback, identity normalization).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from chitchat.core.errors import InputError

PAD, UNK, BOS, EOS, SEP = "<pad>", "<unk>", "<bos>", "<eos>", "<sep>"
SPECIALS = [PAD, UNK, BOS, EOS, SEP]  # ids 0..4 in both backends
UNKNOWN_CATEGORY = "<cat:?>"
KINDS = ("tokenizers", "sentencepiece")
META_FILE = "tokenizer_meta.json"


def category_token(name: str) -> str:
    """The vocabulary entry for a category: whitespace folded so every backend keeps it whole."""
    return "<cat:" + re.sub(r"\s+", "_", name.strip()) + ">"


class Tokenizer:
    """Encode/decode text and look up special and category ids, whatever the backend."""

    def __init__(self, kind: str, backend, categories: dict[str, str]):
        self.kind = kind
        self._backend = backend
        self.categories = dict(categories)  # category name -> its token
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.sep_id = (
            self.token_to_id(t) for t in SPECIALS
        )
        self._category_ids = {name: self.token_to_id(tok) for name, tok in self.categories.items()}
        self.unknown_category_id = self.token_to_id(UNKNOWN_CATEGORY)
        self._skip = set(range(len(SPECIALS))) | set(self._category_ids.values()) | {self.unknown_category_id}
        # What a decoder must never emit: every special but EOS, and the category tokens.
        self.never_generated = tuple(sorted(self._skip - {self.eos_id}))

    # -- lookups -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        if self.kind == "sentencepiece":
            idx = self._backend.piece_to_id(token)
            ok = idx != self._backend.unk_id() or token == UNK
        else:
            idx = self._backend.token_to_id(token)
            ok = idx is not None
        if not ok:
            raise KeyError(token)
        return int(idx)

    def category_id(self, category: str) -> int:
        """The id of a category's token; unknown categories share one token."""
        return self._category_ids.get(category, self.unknown_category_id)

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "sentencepiece":
            return self._backend.encode(list(texts), out_type=int)
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at EOS and skipping special and category tokens."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in self._skip:
                kept.append(i)
        if self.kind == "sentencepiece":
            return self._backend.decode(kept)
        return self._backend.decode(kept, skip_special_tokens=False)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "sentencepiece":
            (directory / "spm.model").write_bytes(self._backend.serialized_model_proto())
        else:
            self._backend.save(str(directory / "tokenizer.json"))
        meta = {"kind": self.kind, "categories": self.categories}
        (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise InputError(directory, f"not a tokenizer directory ({META_FILE} missing)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["kind"] == "sentencepiece":
            import sentencepiece as spm

            backend = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
        else:
            from tokenizers import Tokenizer as HFTokenizer

            backend = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(meta["kind"], backend, meta["categories"])


def _category_tokens(categories: Sequence[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    used = {UNKNOWN_CATEGORY}
    for name in sorted(set(categories)):
        token = category_token(name)
        n = 2
        while token in used:  # two names that differ only in whitespace
            token = category_token(f"{name}_{n}")
            n += 1
        used.add(token)
        tokens[name] = token
    return tokens


def _train_hf(texts: Iterable[str], vocab_size: int, min_frequency: int, extra: list[str]):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS + extra,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _train_spm(texts: Iterable[str], vocab_size: int, extra: list[str]):
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        _spm_train(spm, texts, model, vocab_size, extra)
    except RuntimeError as exc:  # sentencepiece reports a too-small vocab as an INTERNAL error
        need = re.search(r"(\d+) vs (\d+)", str(exc))
        detail = f": need at least {need.group(2)}" if need else f" ({exc})"
        raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small for sentencepiece with byte fallback{detail}") from None
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _spm_train(spm, texts, model, vocab_size: int, extra: list[str]) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS,
        eos_piece=EOS, user_defined_symbols=[SEP] + extra, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity", hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )


def train_tokenizer(
    texts: Iterable[str],
    categories: Sequence[str],
    kind: str = "tokenizers",
    vocab_size: int = 2000,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a BPE tokenizer on `texts` with the special tokens and a token per category."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer.kind must be one of {KINDS}, got {kind!r}")
    cats = _category_tokens(categories)
    extra = [UNKNOWN_CATEGORY] + list(cats.values())
    if kind == "sentencepiece":
        backend = _train_spm(texts, vocab_size, extra)
    else:
        backend = _train_hf(texts, vocab_size, min_frequency, extra)
        _check_room(backend, vocab_size, len(SPECIALS) + len(extra))
    return Tokenizer(kind, backend, cats)


def _check_room(backend, vocab_size: int, reserved: int) -> None:
    """BPE keeps every special token and every character of the texts whatever the target size, so
    a target below that comes back larger than asked and without one merge (not a word in it):
    refused, saying the least that works."""
    size = backend.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"tokenizer.vocab_size = {vocab_size}: too small, the {reserved} special and category "
                         f"tokens and the {size - reserved} characters of the train split need {size} "
                         f"(the least that works, with no merges; BPE learns words above it, e.g. 8000)")
