"""The model section of params.yaml as a typed, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chitchat.models.attention import ATTENTION_KINDS

MODEL_TYPES = ("gru", "lstm")


@dataclass(frozen=True)
class ModelConfig:
    type: str = "gru"  # architecture: gru | lstm
    emb_dim: int = 128  # token embedding size
    hidden_dim: int = 256  # recurrent state size (split across directions when bidirectional)
    layers: int = 1  # stacked layers in encoder and in decoder
    dropout: float = 0.1  # dropout on embeddings and between layers
    attention: str = "general"  # none | dot | general | additive
    bidirectional: bool = True  # bidirectional encoder
    residual: bool = False  # residual connections between stacked layers
    layer_norm: bool = False  # layer norm after each stacked layer
    vocab_size: int = 0  # filled from the tokenizer
    pad_id: int = 0  # filled from the tokenizer

    def __post_init__(self):
        if self.type not in MODEL_TYPES:
            raise ValueError(f"model.type must be one of {MODEL_TYPES}, got {self.type!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"model.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError("model.hidden_dim must be even for a bidirectional encoder")
        if self.layers < 1 or not 0 <= self.dropout < 1:
            raise ValueError("model.layers must be >= 1 and model.dropout in [0, 1)")


    def as_dict(self) -> dict:
        return asdict(self)
