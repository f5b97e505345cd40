"""A Hugging Face tokenizer with the face of `chitchat.text.tokenizer.Tokenizer`, and the text prompt of
model type `hf`.

A pretrained causal LM has no category tokens, so the source is text it can read:

    Категория: Юмор          (Персонаж: Пенни with prepare.condition_field speaker; left out
                             without a category, or when model.condition is false)
    — earlier turn           (dialogues: the history, oldest first)
    — question

then the target `<bos> answer <eos>`: BOS marks where the answer starts. Pieces are encoded one by
one and concatenated, so training, evaluation and serving cut the prompt the same way: the
category line and the question's beginning stay, the oldest turns go first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from chitchat.core.errors import InputError
from chitchat.text.prompt import Example

KIND = "hf"
META_FILE = "chitchat_meta.json"  # beside the HF tokenizer files: categories and the prompt format
CATEGORY_LINE = "Категория: {}\n"
CONDITION_LINES = {"category": CATEGORY_LINE, "speaker": "Персонаж: {}\n"}  # by prepare.condition_field
TURN_LINE = "— {}\n"  # a Russian dialogue line; history turns and the question alike
PAD = "<pad>"  # added when the checkpoint has no padding token distinct from BOS and EOS
INSTALL_HINT = 'model.type hf needs the optional extra: pip install -e ".[hf]"'


def import_transformers():
    """The transformers module, or a one-line ValueError telling how to install it."""
    try:
        import transformers
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    transformers.logging.set_verbosity_error()  # a local tiny checkpoint draws config warnings
    transformers.logging.disable_progress_bar()  # stages draw their own; loading bars only add noise
    return transformers


def check_pretrained_dir(path: str | Path, what: str = "model.pretrained",
                         fix: str = "download a checkpoint first, see docs/models.md") -> Path:
    """`path` if it holds a Hugging Face checkpoint (config.json); else a one-line InputError."""
    if not str(path).strip():
        raise ValueError(f"{what} is empty: model.type hf needs a local checkpoint folder (see docs/models.md)")
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, f"{what}: no such folder ({fix})")
    if not (path / "config.json").is_file():
        raise InputError(path, f"{what}: not a Hugging Face model folder (config.json missing)")
    return path


class HFTokenizer:
    """Encode/decode text and build prompts with a pretrained tokenizer; ids as the LM knows them."""

    kind = KIND

    def __init__(self, backend, categories: Iterable[str] = (), category_line: str = CATEGORY_LINE):
        self._backend = backend
        self.category_line = category_line  # the prompt's first line, "{}" the category or character
        # name -> its prompt line; ChatService looks names up here, as in our Tokenizer
        self.categories = {name: category_line.format(name) for name in sorted(set(categories))}
        if backend.eos_token_id is None:
            raise ValueError("the pretrained tokenizer has no EOS token; the answer could never end")
        self.eos_id = int(backend.eos_token_id)
        self.bos_id = int(backend.bos_token_id if backend.bos_token_id is not None else self.eos_id)
        if backend.pad_token_id is None or backend.pad_token_id in (self.eos_id, self.bos_id):
            # the loss ignores pad targets: a pad equal to EOS would teach the model never to stop
            backend.add_special_tokens({"pad_token": PAD})
        self.pad_id = int(backend.pad_token_id)
        self.unk_id = int(backend.unk_token_id if backend.unk_token_id is not None else self.pad_id)
        self.sep_id = self.bos_id  # the answer separator of the prompt
        self.unknown_category_id = self.pad_id  # unused: categories are text here, see encode_source
        self.never_generated = tuple(sorted(set(backend.all_special_ids) - {self.eos_id}))

    @property
    def vocab_size(self) -> int:
        return len(self._backend)  # added tokens included; the model's embeddings are resized to it

    @property
    def backend(self):
        return self._backend

    def category_id(self, category: str) -> int:
        """Our tokenizer's category token; here the category is a prompt line (see encode_source)."""
        return self.unknown_category_id

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self._backend(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at EOS and skipping special tokens."""
        special = set(self.never_generated)
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in special:
                kept.append(i)
        return self._backend.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()

    # -- the prompt ----------------------------------------------------------------------------
    def encode_sources(self, questions: Sequence[str], categories: Sequence[str | None],
                       histories: Sequence[Sequence[str] | None], max_len: int) -> list[tuple[list[int], bool]]:
        """(prompt ids, question was cut) per question, at most `max_len` (>= 2) tokens each.

        A None category leaves the category line out. The most recent turns that fit
        are kept; the question is cut only when it alone overflows.
        """
        lines = [self.category_line.format(c) if c else "" for c in categories]
        turns = [list(h) if h is not None else [] for h in histories]
        flat = [TURN_LINE.format(t) for h in turns for t in h]
        cat_ids = self.encode_batch(lines)
        q_ids = self.encode_batch([TURN_LINE.format(q) for q in questions])
        turn_ids = iter(self.encode_batch(flat))
        out = []
        for cat, q, h in zip(cat_ids, q_ids, turns):
            hist = [next(turn_ids) for _ in h]
            cat = cat[: max_len - 1]  # a budget too small for the category line still keeps a question token
            room = max_len - len(cat)
            truncated = len(q) > room
            q = q[:room]
            kept: list[int] = []
            for turn in reversed(hist):  # most recent first, until the budget is spent
                if len(cat) + len(turn) + len(kept) + len(q) > max_len:
                    break
                kept = turn + kept
            out.append((cat + kept + q, truncated))
        return out

    def encode_source(self, question: str, category: str | None = None, history: Sequence[str] | None = None,
                      max_len: int = 128) -> tuple[list[int], bool]:
        return self.encode_sources([question], [category], [history], max_len)[0]

    def encode_examples(self, df, max_src_len: int, max_tgt_len: int, condition: bool = True) -> list:
        """chitchat.text.prompt.Example per row of a pairs table: src = prompt, tgt = <bos> answer <eos>.

        Uses the `history` list column when there is one (prepare.max_history turns per pair).
        """
        histories = df["history"].to_list() if "history" in df.columns else [None] * df.height
        categories = df["category"].to_list() if condition else [None] * df.height
        sources = self.encode_sources(df["question"].to_list(), categories, histories, max_src_len)
        answers = self.encode_batch(df["answer"].to_list())
        return [Example(src, [self.bos_id] + a[: max_tgt_len - 2] + [self.eos_id])
                for (src, _), a in zip(sources, answers)]

    def chat_template(self) -> str:
        """The prompt above as a Jinja chat template (tokenizer_config.json's `chat_template`), so
        `apply_chat_template`, vLLM or TGI build the prompt this model was trained on: a system
        message is the category (or character) line, every other message a turn, the generation
        prompt BOS. Send at most prepare.max_history earlier turns, as chitchat does."""
        prefix, _, suffix = self.category_line.partition("{}")
        turn_prefix, _, turn_suffix = TURN_LINE.partition("{}")
        quote = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731  a Jinja string literal
        return ("{%- for message in messages -%}"
                "{%- if message['role'] == 'system' -%}"
                f"{{{{ {quote(prefix)} + message['content'] + {quote(suffix)} }}}}"
                "{%- else -%}"
                f"{{{{ {quote(turn_prefix)} + message['content'] + {quote(turn_suffix)} }}}}"
                "{%- endif -%}"
                "{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{ bos_token }}{%- endif -%}")

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._backend.chat_template = self.chat_template()
        self._backend.save_pretrained(str(directory))
        meta = {"kind": KIND, "categories": sorted(self.categories),
                "prompt": {"category": self.category_line, "turn": TURN_LINE}}
        (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, categories: Iterable[str] | None = None,
             category_line: str | None = None) -> "HFTokenizer":
        """The tokenizer in `directory` (a pretrained checkpoint or data/model/hf), offline.

        Categories and the category line come from the arguments, else from the folder's
        chitchat_meta.json (what training saved), else none and CATEGORY_LINE.
        """
        transformers = import_transformers()
        directory = Path(directory)
        try:
            backend = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(directory, f"cannot load a Hugging Face tokenizer ({exc.__class__.__name__})") from None
        meta_file = directory / META_FILE
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        if categories is None:
            categories = meta.get("categories", [])
        if category_line is None:
            category_line = meta.get("prompt", {}).get("category", CATEGORY_LINE)
        return cls(backend, categories, category_line)
