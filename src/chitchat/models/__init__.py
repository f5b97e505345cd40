"""Models: the zoo behind one interface (Seq2Seq) and one factory, `build_model(ModelConfig)`.

May import chitchat.core and chitchat.text; never answering, training, evaluation or serving.
"""

from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import MODEL_TYPES, ModelConfig
from chitchat.models.cnn import ConvSeq2Seq
from chitchat.models.lm import TransformerLM
from chitchat.models.rnn import RNNSeq2Seq
from chitchat.models.transformer import TransformerSeq2Seq

MODELS = {"gru": RNNSeq2Seq, "lstm": RNNSeq2Seq, "cnn": ConvSeq2Seq, "transformer": TransformerSeq2Seq}


def build_model(cfg: ModelConfig) -> Seq2Seq:
    """The model for `cfg.type` (and `cfg.task`); every type implements the Seq2Seq interface."""
    if cfg.task == "lm":  # a decoder-only transformer continuing text (ModelConfig checks the type)
        return TransformerLM(cfg)
    if cfg.type == "hf":  # transformers is an optional extra: imported only for this type
        from chitchat.models.hf import build_hf_model

        return build_hf_model(cfg)
    if cfg.type not in MODELS:
        raise ValueError(f"model.type must be one of {MODEL_TYPES}, got {cfg.type!r}")
    return MODELS[cfg.type](cfg)


__all__ = ["Encoded", "ModelConfig", "MODEL_TYPES", "Seq2Seq", "build_model"]
