"""The request bodies of the OpenAI-compatible routes, and how they become chitchat's decoding.

Field names are OpenAI's (`max_tokens`, `temperature`, `top_p`, `n`, `stop`, `seed`, `stream`,
...) plus the extras vLLM's server also reads (`top_k`, `min_tokens`, `repetition_penalty`) and
chitchat's own (`strategy`, `beam_size`, `no_repeat_ngram_size`, `rerank_k`, `category`,
`persona`, ...). Fields an OpenAI client sends that chitchat has no use for (`user`, ...) are
accepted and ignored; ones whose meaning it cannot honour (`tools`, `logprobs`, a non-zero
`frequency_penalty`, ...) are refused with a 400 naming the field.

Sampling: `temperature` 0 is greedy. With neither `temperature`, `top_p`, `top_k` nor `n` > 1
given, the answer is chitchat's default (greedy, as the CLI's), not OpenAI's temperature 1; a
sampled request without `seed` draws one, so two such requests differ, and the same seed twice
gives the same text.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import RequestError
from chitchat.serve import limits

B = limits.BOUNDS
D = DecodingConfig()
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_STOP_CHARS = 100
MAX_MESSAGES = 2 * limits.MAX_HISTORY + 8  # the history a request may carry, its question and system lines
MAX_PROMPTS = 16  # prompts of one /v1/completions request
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "response_format",
               "logprobs", "top_logprobs", "echo", "best_of", "suffix", "audio", "modalities", "prediction")


def _opt(name: str, **extra):
    low, high = B[name]
    return Field(None, ge=low, le=high, **extra)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(BaseModel):
    """The fields /v1/chat/completions and /v1/completions share."""

    model_config = ConfigDict(extra="allow")
    model: Optional[str] = Field(None, max_length=200)
    max_tokens: Optional[int] = _opt("max_new_tokens")
    max_completion_tokens: Optional[int] = _opt("max_new_tokens")
    min_tokens: Optional[int] = _opt("min_new_tokens")
    temperature: Optional[float] = Field(None, ge=0, le=B["temperature"][1], description="0: greedy")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1, le=B["top_k"][1], description="0 or -1: off")
    n: int = Field(1, ge=B["n"][0], le=B["n"][1], description="answers per prompt")
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = _opt("seed")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # chitchat's extras, as in its own API (docs/decoding.md)
    strategy: Optional[Literal["greedy", "beam", "nucleus"]] = None
    beam_size: Optional[int] = _opt("beam_size")
    length_penalty: Optional[float] = _opt("length_penalty")
    no_repeat_ngram_size: Optional[int] = _opt("no_repeat_ngram_size")
    repetition_penalty: Optional[float] = _opt("repetition_penalty")
    early_stopping: Optional[bool] = None
    rerank_k: Optional[int] = _opt("rerank_k")
    rerank_own: Optional[bool] = None
    rerank_mmi: Optional[float] = Field(None, ge=0, le=1)
    category: Optional[str] = Field(None, max_length=limits.MAX_CATEGORY)
    persona: Optional[str] = Field(None, max_length=limits.MAX_CATEGORY)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return [s for s in stops if s]

    def refuse_unsupported(self) -> None:
        """RequestError (param named) for a field whose meaning chitchat cannot honour."""
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            if extra.get(name) not in (None, False, [], {}, 0, "none", "auto", {"type": "text"}):
                raise ParamError(name, f"{name} is not supported by chitchat")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ParamError(name, f"{name} is not supported by chitchat: use repetition_penalty "
                                       "or no_repeat_ngram_size")
        if self.category and self.persona and self.category != self.persona:
            raise ParamError("persona", "give category or persona, not two different ones")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def decoding(self) -> DecodingConfig:
        """The DecodingConfig these fields ask for; options of other strategies keep their defaults,
        so equal requests batch together (chitchat.serve.batcher)."""
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ParamError("max_completion_tokens", "max_tokens and max_completion_tokens differ")
        strategy = self.strategy or self._strategy()
        picked = {"max_new_tokens": self.max_completion_tokens or self.max_tokens,
                  "min_new_tokens": self.min_tokens, "n": self.n, "beam_size": self.beam_size,
                  "length_penalty": self.length_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size,
                  "repetition_penalty": self.repetition_penalty, "early_stopping": self.early_stopping,
                  "rerank_k": self.rerank_k, "rerank_own": self.rerank_own, "rerank_mmi": self.rerank_mmi}
        if strategy == "nucleus":
            picked.update(temperature=self.temperature or 1.0, top_p=self.top_p, top_k=max(self.top_k or 0, 0),
                          seed=self.seed if self.seed is not None else secrets.randbelow(2**63))
        decoding = replace(D, strategy=strategy, **{k: v for k, v in picked.items() if v is not None})
        if strategy == "beam" and self.beam_size is None and decoding.n > decoding.beam_size:
            decoding = replace(decoding, beam_size=decoding.n)
        return limits.check(decoding)

    def _strategy(self) -> str:
        if self.temperature == 0:
            return "greedy"
        sampled = self.temperature is not None or self.top_p is not None or self.top_k not in (None, 0, -1)
        return "nucleus" if sampled or self.n > 1 else D.strategy


class ParamError(RequestError):
    """A RequestError that names the request field at fault (OpenAI's `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str = Field(max_length=limits.MAX_TURN)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)

    def dialogue(self) -> tuple[str, list[str], list[str]]:
        """(question, earlier turns oldest first, system lines): the last message must be the user's."""
        if self.messages[-1].role != "user":
            raise ParamError("messages", f"the last message must be the user's question, got role "
                                         f"{self.messages[-1].role!r}")
        turns = [m.text() for m in self.messages[:-1] if m.role in ("user", "assistant")]
        system = [m.text().strip() for m in self.messages if m.role in ("system", "developer")]
        if len(turns) > limits.MAX_HISTORY:
            turns = turns[-limits.MAX_HISTORY:]  # the model reads fewer still (its max_history)
        return self.messages[-1].text(), turns, system


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(value)}")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
