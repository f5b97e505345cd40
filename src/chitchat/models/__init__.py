"""Model zoo behind one factory: `build_model(ModelConfig)`."""

from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import MODEL_TYPES, ModelConfig
from chitchat.models.rnn import RNNSeq2Seq


def build_model(cfg: ModelConfig) -> Seq2Seq:
    """The model for `cfg.type`; every type implements the Seq2Seq interface."""
    if cfg.type in ("gru", "lstm"):
        return RNNSeq2Seq(cfg)
    raise ValueError(f"model.type must be one of {MODEL_TYPES}, got {cfg.type!r}")


__all__ = ["Encoded", "ModelConfig", "MODEL_TYPES", "Seq2Seq", "build_model"]
