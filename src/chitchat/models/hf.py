"""Model type `hf`: a pretrained Hugging Face causal LM (GPT-2 family, ruGPT-3, ...) behind the
Seq2Seq interface, fine-tuned in full or through a LoRA adapter (peft).

The prompt (see chitchat.text.hf_tokenizer) is the source: `encode` runs it once and keeps its keys and
values; the target `<bos> answer <eos>` is decoded on top of that cache. Prompts come right-padded:
pad keys are masked out and every row's positions go on from its own prompt length, so a row's
logits do not depend on what it is batched with. The cache is a tuple of per-layer (key, value)
tensors with the batch first, so decoding reorders it like any other model's.

transformers and peft are imported only here and in chitchat.text.hf_tokenizer (the `hf` extra).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import torch

from chitchat.core.errors import InputError
from chitchat.text.hf_tokenizer import (CONDITION_LINES, INSTALL_HINT, HFTokenizer, check_pretrained_dir,
                                   import_transformers)
from chitchat.models.base import Encoded, Seq2Seq
from chitchat.models.config import ModelConfig

Past = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (key, value): (batch, heads, len, head_dim)


class HFCausalLM(Seq2Seq):
    """A causal LM answering after its prompt: src = prompt ids, tgt_in = <bos> answer."""

    cache_batch_dim = 0

    def __init__(self, lm, cfg: ModelConfig):
        super().__init__()
        self.lm = lm  # a transformers PreTrainedModel, or a peft model wrapping one
        self.cfg = cfg

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Past | None = None,
             use_cache: bool = False, keep: int = 0):
        """The LM on `ids` after `past`; `mask` covers past + ids; logits of the last `keep` (0: all)."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=past, config=self._base_config()) if past else None
        return self.lm(input_ids=ids, attention_mask=mask.long(), position_ids=positions, past_key_values=cache,
                       use_cache=use_cache, logits_to_keep=keep)

    def _base_config(self):
        return self.lm.get_base_model().config if hasattr(self.lm, "get_base_model") else self.lm.config

    def encode(self, src: torch.Tensor) -> Encoded:
        """Run the prompts (batch, src_len); state = their cache, mask = (batch, src_len) real tokens."""
        mask = src != self.cfg.pad_id
        positions = torch.arange(src.size(1), device=src.device).expand_as(src)
        out = self._run(src, mask, positions, use_cache=True, keep=1)
        past = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        memory = src.new_zeros(src.size(0), src.size(1), 0, dtype=torch.float)  # the cache is the memory
        return Encoded(memory, mask, past)

    def init_cache(self, enc: Encoded) -> dict:
        return {"past": enc.state, "mask": enc.mask, "pos": enc.mask.sum(1)}

    def decode(self, tgt_in: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab) after the encoded prompts."""
        mask = torch.cat([enc.mask, tgt_in != self.cfg.pad_id], dim=1)
        positions = enc.mask.sum(1, keepdim=True) + torch.arange(tgt_in.size(1), device=tgt_in.device)
        return self._run(tgt_in, mask, positions, enc.state, use_cache=True).logits

    def decode_step(self, tokens: torch.Tensor, enc: Encoded, cache: dict) -> tuple[torch.Tensor, dict]:
        mask = torch.cat([cache["mask"], torch.ones_like(cache["mask"][:, :1])], dim=1)
        out = self._run(tokens.unsqueeze(1), mask, cache["pos"].unsqueeze(1), cache["past"], use_cache=True)
        past = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return out.logits[:, -1], {"past": past, "mask": mask, "pos": cache["pos"] + 1}

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """decode(tgt_in, encode(src)) in one pass over prompt + answer (training, scoring)."""
        src_mask = src != self.cfg.pad_id
        mask = torch.cat([src_mask, tgt_in != self.cfg.pad_id], dim=1)
        positions = torch.cat([torch.arange(src.size(1), device=src.device).expand_as(src),
                               src_mask.sum(1, keepdim=True) + torch.arange(tgt_in.size(1), device=src.device)], dim=1)
        return self._run(torch.cat([src, tgt_in], dim=1), mask, positions, keep=tgt_in.size(1)).logits


def _load_lm(directory: Path, vocab_size: int):
    transformers = import_transformers()
    try:
        lm = transformers.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                               dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:  # missing weights, unknown architecture
        raise InputError(directory, f"cannot load a Hugging Face causal LM ({exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0][:200]})") from None
    if lm.get_input_embeddings().num_embeddings < vocab_size:  # the tokenizer gained a <pad>
        lm.resize_token_embeddings(vocab_size)
    return lm


def _add_lora(lm, cfg: ModelConfig):
    try:
        from peft import LoraConfig, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    if cfg.lora_target_modules == "auto":
        # peft's choice for known architectures (GPT-2: c_attn), every linear layer otherwise
        targets = None if lm.config.model_type in DEFAULT_TARGETS else "all-linear"
    else:
        targets = [name.strip() for name in cfg.lora_target_modules.split(",") if name.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft's notes on versions and layer types, not the user's concern:
            warnings.filterwarnings("ignore", message="fan_in_fan_out")  # GPT-2's Conv1D: peft adapts itself
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return get_peft_model(lm, lora)
    except ValueError as exc:  # e.g. a target module name the model does not have
        raise ValueError(f"model.lora_target_modules: {str(exc).splitlines()[0][:200]}") from None


def load_pretrained(cfg: ModelConfig, categories: Iterable[str] = (),
                    condition_field: str = "category") -> tuple[HFCausalLM, HFTokenizer]:
    """Model and tokenizer from `cfg.pretrained`, LoRA added when cfg.lora_r > 0; the model's cfg
    gets the tokenizer's vocab size and pad id; `categories` are the names the prompt may carry,
    introduced as prepare.condition_field says (a category, or the character who answers)."""
    import dataclasses

    directory = check_pretrained_dir(cfg.pretrained)
    tok = HFTokenizer.load(directory, categories=categories, category_line=CONDITION_LINES[condition_field])
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    lm = _load_lm(directory, tok.vocab_size)
    if cfg.lora_r > 0:
        lm = _add_lora(lm, cfg)
    return HFCausalLM(lm, cfg), tok


def build_hf_model(cfg: ModelConfig) -> HFCausalLM:
    """build_model's `hf` branch: the pretrained model of cfg.pretrained (LoRA when cfg.lora_r > 0)."""
    return load_pretrained(cfg)[0]


def save_hf_model(model: HFCausalLM, tok: HFTokenizer, directory: str | Path) -> None:
    """Write a self-contained HF folder: weights with any LoRA adapter merged in, config, tokenizer.

    Serving then needs neither the original checkpoint nor peft. The model is merged in place.
    """
    directory = Path(directory)
    if hasattr(model.lm, "merge_and_unload"):
        model.lm = model.lm.merge_and_unload()
    model.lm.save_pretrained(str(directory), safe_serialization=True)
    tok.save(directory)


def load_hf_model(directory: str | Path, cfg: ModelConfig, device: str | torch.device = "cpu") -> HFCausalLM:
    """The fine-tuned model that save_hf_model wrote to `directory`, in eval mode."""
    directory = check_pretrained_dir(directory, "fine-tuned model", "run `dvc repro` first")
    model = HFCausalLM(_load_lm(directory, cfg.vocab_size), cfg)
    return model.to(device).eval()

