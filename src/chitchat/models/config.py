"""The model section of params.yaml as a typed, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chitchat.models.attention import ATTENTION_KINDS

MODEL_TYPES = ("gru", "lstm", "cnn", "transformer", "hf")
POSITIONS = ("sinusoidal", "learned")
TASKS = ("seq2seq", "lm")


@dataclass(frozen=True)
class ModelConfig:
    task: str = "seq2seq"  # seq2seq (question -> answer) | lm (decoder-only transformer continuing text)
    type: str = "gru"  # architecture: gru | lstm | cnn | transformer | hf (a pretrained causal LM)
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
    turn_embeddings: bool = False  # transformer: add a learned embedding of each source token's turn (0 = question)
    pretrained: str = ""  # hf: local folder of a Hugging Face causal LM checkpoint
    lora_r: int = 0  # hf: LoRA rank (0 = fine-tune every weight)
    lora_alpha: float = 16.0  # hf: LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # hf: dropout on the LoRA branch
    lora_target_modules: str = "auto"  # hf: comma-separated module names; auto = peft's default per architecture
    context: int = 0  # lm: tokens attended to, the training window (filled from train.max_tgt_len; 0 = max_len)
    vocab_size: int = 0  # filled from the tokenizer
    pad_id: int = 0  # filled from the tokenizer
    sep_id: int = 4  # filled from the tokenizer: the turn separator (<sep>, id 4 in our tokenizers)

    def __post_init__(self):
        if self.type not in MODEL_TYPES:
            raise ValueError(f"model.type must be one of {MODEL_TYPES}, got {self.type!r}")
        if self.task not in TASKS:
            raise ValueError(f"model.task must be one of {TASKS}, got {self.task!r}")
        if self.task == "lm" and self.type != "transformer":
            raise ValueError(f"model.task lm needs model.type transformer (a decoder-only transformer), got {self.type!r}")
        if not 0 <= self.context <= self.max_len:
            raise ValueError(f"model.context must be in [0, model.max_len={self.max_len}], got {self.context}")
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
        if self.lora_r < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("model.lora_r must be >= 0 and model.lora_dropout in [0, 1)")


    def as_dict(self) -> dict:
        return asdict(self)
