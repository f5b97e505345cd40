"""The schema of params.yaml: every key typed and ranged, the choices spelled out, the rules that
join keys; checked by load_params before a stage does any work.

A violation is one line naming the key, the value and what is allowed, e.g.

    params.yaml: train.lr = 'abc': must be a number

Keys a section leaves out take the stage's default (tests and small projects write short
files); a key the schema does not know is refused, so a typo in `dvc exp run -S` stops the run.
Types are strict: `epochs: ten` or `lr: "0.1"` is refused, not coerced; a float key takes an int.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Count = Annotated[int, Field(ge=0)]  # 0 is allowed (and usually means "off" or "no limit")
Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Rate = Annotated[float, Field(ge=0, lt=1)]  # dropout, label smoothing

# What each constraint means, in the words of the error line (pydantic's own message follows).
_ALLOWED = {"greater_than": "a number > {gt}", "greater_than_equal": "a number >= {ge}", "less_than": "a number < {lt}",
            "less_than_equal": "a number <= {le}", "int_type": "a whole number", "int_from_float": "a whole number",
            "float_type": "a number", "bool_type": "true or false", "string_type": "text", "list_type": "a list",
            "dict_type": "a mapping", "model_type": "a mapping", "literal_error": "one of {expected}",
            "too_short": "at least {min_length} item(s)"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """`key:` with no value (YAML null) is a mistake, not "use the default"."""
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and key in cls.model_fields:
                    raise ValueError(f"{key} has no value (YAML null); give one or leave the key out")
        return data


class InputEntry(_Section):
    path: str
    format: Literal["auto", "qa_jsonl", "pairs_tsv", "dialogues", "speakers", "text"] = "auto"
    name: str = ""
    category: str = ""
    fields: dict[str, str] = {}
    answers_keep: str = "all"


def _min_max(obj: BaseModel, pairs: list[tuple[str, str]], section: str) -> None:
    for low, high in pairs:
        lo, hi = getattr(obj, low), getattr(obj, high)
        if lo is not None and hi and hi < lo:
            raise ValueError(f"{section}.{high} ({hi}) is below {section}.{low} ({lo}); 0 means no limit")


class Prepare(_Section):
    inputs: Optional[list[InputEntry]] = Field(None, min_length=1)
    max_history: Optional[Count] = None
    condition_field: Optional[Literal["category", "speaker"]] = None
    lowercase: Optional[bool] = None
    yo_to_e: Optional[bool] = None
    missing_category: Optional[str] = None
    min_question_chars: Optional[Count] = None
    max_question_chars: Optional[Count] = None
    min_question_words: Optional[Count] = None
    max_question_words: Optional[Count] = None
    min_answer_chars: Optional[Count] = None
    max_answer_chars: Optional[Count] = None
    min_answer_words: Optional[Count] = None
    max_answer_words: Optional[Count] = None
    drop_link_only: Optional[bool] = None
    min_text_chars: Optional[Count] = None
    max_text_chars: Optional[Count] = None
    categories: Optional[list[str]] = None

    @model_validator(mode="after")
    def _ranges(self) -> "Prepare":
        _min_max(self, [(f"min_{w}", f"max_{w}") for w in ("question_chars", "question_words", "answer_chars",
                                                          "answer_words", "text_chars")], "prepare")
        return self


class Near(_Section):
    casefold: Optional[bool] = None
    yo_to_e: Optional[bool] = None
    punctuation: Optional[bool] = None
    repeats: Optional[bool] = None
    whitespace: Optional[bool] = None


class Dedup(_Section):
    exact: Optional[bool] = None
    near: Optional[Near] = None
    answer_equals_question: Optional[bool] = None
    max_per_question: Optional[Count] = None
    max_per_first_phrase: Optional[Count] = None
    memory_mb: Optional[Annotated[int, Field(ge=512)]] = None


class Split(_Section):
    valid_fraction: Optional[Fraction] = None
    test_fraction: Optional[Fraction] = None
    seed: Optional[int] = None
    stratify: Optional[bool] = None

    @model_validator(mode="after")
    def _sum(self) -> "Split":
        if self.valid_fraction is not None and self.test_fraction is not None \
                and self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(f"split.valid_fraction + split.test_fraction must be below 1, got "
                             f"{self.valid_fraction} + {self.test_fraction}")
        return self


class Tokenizer(_Section):
    kind: Optional[Literal["tokenizers", "sentencepiece"]] = None
    vocab_size: Optional[Annotated[int, Field(ge=16)]] = None  # the stage checks the alphabet after training
    min_frequency: Optional[Positive] = None


MODEL_TYPES = ("gru", "lstm", "cnn", "transformer", "hf", "retrieval")


class Model(_Section):
    task: Optional[Literal["seq2seq", "lm"]] = None
    type: Optional[Literal[MODEL_TYPES]] = None
    emb_dim: Optional[Positive] = None
    hidden_dim: Optional[Positive] = None
    layers: Optional[Positive] = None
    dropout: Optional[Rate] = None
    condition: Optional[bool] = None
    attention: Optional[Literal["none", "dot", "general", "additive"]] = None
    bidirectional: Optional[bool] = None
    residual: Optional[bool] = None
    layer_norm: Optional[bool] = None
    kernel_size: Optional[Positive] = None
    heads: Optional[Positive] = None
    positions: Optional[Literal["sinusoidal", "learned"]] = None
    tie_embeddings: Optional[bool] = None
    max_len: Optional[Positive] = None
    turn_embeddings: Optional[bool] = None
    pretrained: Optional[str] = None
    lora_r: Optional[Count] = None
    lora_alpha: Optional[Annotated[float, Field(gt=0)]] = None
    lora_dropout: Optional[Rate] = None
    lora_target_modules: Optional[str] = None

    @model_validator(mode="after")
    def _shape(self) -> "Model":
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd, got {self.kernel_size}")
        if self.type == "transformer" and self.emb_dim and self.heads and self.emb_dim % self.heads:
            raise ValueError(f"model.emb_dim ({self.emb_dim}) must divide by model.heads ({self.heads})")
        if self.task == "lm" and self.type not in (None, "transformer", "hf"):
            raise ValueError(f"model.task lm needs model.type transformer or hf, got {self.type}")
        return self


class Retrieval(_Section):
    analyzer: Optional[Literal["char_wb", "word"]] = None
    ngram_min: Optional[Positive] = None
    ngram_max: Optional[Positive] = None
    min_df: Optional[Positive] = None
    sublinear_tf: Optional[bool] = None
    history_weight: Optional[Annotated[float, Field(ge=0)]] = None
    category_mode: Optional[Literal["boost", "filter", "off"]] = None
    category_boost: Optional[Annotated[float, Field(ge=0)]] = None

    @model_validator(mode="after")
    def _ngrams(self) -> "Retrieval":
        if self.ngram_min and self.ngram_max and self.ngram_max < self.ngram_min:
            raise ValueError(f"retrieval.ngram_max ({self.ngram_max}) is below retrieval.ngram_min ({self.ngram_min})")
        return self


class Train(_Section):
    seed: Optional[int] = None
    device: Optional[Literal["auto", "cpu", "cuda"]] = None
    epochs: Optional[Positive] = None
    max_tokens: Optional[Positive] = None
    accum_steps: Optional[Positive] = None
    lr: Optional[Annotated[float, Field(gt=0)]] = None
    weight_decay: Optional[Annotated[float, Field(ge=0)]] = None
    warmup_steps: Optional[Count] = None
    schedule: Optional[Literal["constant", "cosine", "inverse_sqrt"]] = None
    clip_norm: Optional[Annotated[float, Field(ge=0)]] = None
    label_smoothing: Optional[Rate] = None
    eval_every: Optional[Positive] = None
    patience: Optional[Count] = None
    max_src_len: Optional[Annotated[int, Field(ge=2)]] = None
    max_tgt_len: Optional[Annotated[int, Field(ge=2)]] = None
    max_minutes: Optional[Annotated[float, Field(ge=0)]] = None
    max_steps: Optional[Count] = None
    checkpoint_every: Optional[Count] = None
    threads: Optional[Count] = None
    precision: Optional[Literal["auto", "fp32", "bf16", "fp16"]] = None
    compile: Optional[bool] = None


class Decoding(_Section):
    strategy: Optional[Literal["greedy", "beam", "nucleus"]] = None
    max_new_tokens: Optional[Positive] = None
    min_new_tokens: Optional[Count] = None
    no_repeat_ngram_size: Optional[Count] = None
    repetition_penalty: Optional[Annotated[float, Field(gt=0)]] = None
    beam_size: Optional[Positive] = None
    length_penalty: Optional[float] = None
    early_stopping: Optional[bool] = None
    temperature: Optional[Annotated[float, Field(gt=0)]] = None
    top_k: Optional[Count] = None
    top_p: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    seed: Optional[int] = None
    rerank_k: Optional[Annotated[int, Field(ge=0, le=100)]] = None
    rerank_own: Optional[bool] = None
    rerank_mmi: Optional[Annotated[float, Field(ge=0, le=1)]] = None


class Evaluate(_Section):
    batch_size: Optional[Positive] = None
    num_examples: Optional[Count] = None
    seed: Optional[int] = None
    decoding: Optional[Decoding] = None


class Report(_Section):
    char_bin: Optional[Positive] = None
    token_bin: Optional[Positive] = None
    top_tokens: Optional[list[Positive]] = None
    rank_points: Optional[Count] = None


class Params(_Section):
    prepare: Optional[Prepare] = None
    dedup: Optional[Dedup] = None
    split: Optional[Split] = None
    tokenizer: Optional[Tokenizer] = None
    model: Optional[Model] = None
    retrieval: Optional[Retrieval] = None
    train: Optional[Train] = None
    evaluate: Optional[Evaluate] = None
    report: Optional[Report] = None

    @model_validator(mode="after")
    def _across(self) -> "Params":
        """Rules that join sections: the position table of a seq2seq cnn or transformer covers the
        lengths training feeds it (an lm cuts its text into windows that fit)."""
        model, train = self.model, self.train
        if model and train and model.max_len and model.type in ("cnn", "transformer") and model.task != "lm":
            for key in ("max_src_len", "max_tgt_len"):
                length = getattr(train, key)
                if length and length > model.max_len:
                    raise ValueError(f"train.{key} ({length}) exceeds model.max_len ({model.max_len}), the "
                                     f"positions a {model.type} has: raise model.max_len or lower train.{key}")
        return self


def check_params(data: dict, source: str) -> None:
    """ValueError with one line when `data` (params.yaml read) breaks the schema."""
    try:
        Params.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"{source}: {_line(errors[0])}{more}") from None


def _line(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "value_error":  # our own rules: the message names the keys and values itself
        message = str(error["ctx"]["error"])
        return message if not key or message.startswith(key) else f"{key}.{message}"
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key (a typo? every key is listed in the repository's params.yaml)"
    if kind == "missing":
        return f"{key}: required"
    allowed = _ALLOWED.get(kind)
    if allowed is None:
        return f"{key} = {value!r}: {error['msg']}"
    return f"{key} = {value!r}: must be " + allowed.format(**(error.get("ctx") or {}))
