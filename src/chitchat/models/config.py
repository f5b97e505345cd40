"""The model section of params.yaml as a typed, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chitchat.models.attention import ATTENTION_KINDS

MODEL_TYPES = ("gru", "lstm", "cnn", "transformer")
POSITIONS = ("sinusoidal", "learned")


@dataclass(frozen=True)
class ModelConfig:
    type: str = "gru"  # architecture: gru | lstm | cnn | transformer
    emb_dim: int = 128  # token embedding size (d_model of the transformer)
    hidden_dim: int = 256  # rnn state / conv channels / transformer feed-forward width
    layers: int = 1  # stacked layers in encoder and in decoder
    dropout: float = 0.1  # dropout on embeddings and between layers
    condition: bool = True  # lead the source with the category token (False: one shared token)
    attention: str = "general"  # rnn: none | dot | general | additive
    bidirectional: bool = True  # rnn: bidirectional encoder
    residual: bool = False  # rnn: residual connections between stacked layers
    layer_norm: bool = False  # rnn, cnn: layer norm after each stacked layer
    kernel_size: int = 3  # cnn: convolution width (odd)
    heads: int = 4  # transformer: attention heads
    positions: str = "sinusoidal"  # transformer: sinusoidal | learned
    tie_embeddings: bool = True  # transformer: output layer shares the embedding matrix
    max_len: int = 256  # cnn, transformer: longest sequence the position table covers
    vocab_size: int = 0  # filled from the tokenizer
    pad_id: int = 0  # filled from the tokenizer

    def __post_init__(self):
        if self.type not in MODEL_TYPES:
            raise ValueError(f"model.type must be one of {MODEL_TYPES}, got {self.type!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"model.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.type in ("gru", "lstm") and self.bidirectional and self.hidden_dim % 2:
            raise ValueError("model.hidden_dim must be even for a bidirectional encoder")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.type == "transformer" and self.emb_dim % self.heads:
            raise ValueError("model.emb_dim must be divisible by model.heads")
        if self.type == "cnn" and self.kernel_size % 2 == 0:
            raise ValueError("model.kernel_size must be odd")
        if self.layers < 1 or not 0 <= self.dropout < 1:
            raise ValueError("model.layers must be >= 1 and model.dropout in [0, 1)")


    def as_dict(self) -> dict:
        return asdict(self)
