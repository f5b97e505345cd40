"""Save and load a trained model with everything needed to use it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chitchat.core.errors import InputError
from chitchat.core.io import atomic_path
from chitchat.models import ModelConfig, Seq2Seq, build_model
from chitchat.text.tokenizer import Tokenizer

CHECKPOINT_NAME = "model.pt"
HF_DIR = "hf"  # model type hf: data/model/hf holds the fine-tuned model and its tokenizer
RETRIEVAL_DIR = "retrieval"  # data/model/retrieval: the TF-IDF index (model.type retrieval, and rerank_k)
# What to run when a file of the model folder is damaged: DVC's cache holds what the train stage
# wrote last (--force: the damaged file is not in the cache, and checkout asks before replacing it).
REPAIR = "restore it with `dvc checkout -f data/model` or retrain with `dvc repro -f train`"


def save_checkpoint(path: str | Path, model: Seq2Seq, cfg: ModelConfig, **extra: Any) -> None:
    """Weights, model config and `extra` (tokenizer dir, length limits, train state) in one file.

    Model type hf keeps its weights in the Hugging Face folder beside it (`hf_dir`, written by
    chitchat.models.hf.save_hf_model); this file then holds everything but the weights.
    """
    weights = {"hf_dir": HF_DIR} if cfg.type == "hf" else {"state_dict": model.state_dict()}
    state = {"model_config": cfg.as_dict(), **weights, **extra}
    # Through a file object: torch.save(path) names the zip's records after the file, and the temp
    # file's name is random, so the same weights would hash differently on every run.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def save_retrieval_checkpoint(path: str | Path, **extra: Any) -> None:
    """model.pt of `model.type: retrieval`: no weights, only what serving needs to read the index."""
    state = {"model_config": {"type": "retrieval", "task": "seq2seq"}, "retrieval_dir": RETRIEVAL_DIR, **extra}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict of a model folder (or model.pt); InputError when missing or damaged."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise InputError(path, "no trained model here (run `dvc repro` first)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise InputError(path, f"damaged checkpoint, cannot load it ({exc.__class__.__name__}); {REPAIR}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_config"), dict):
        raise InputError(path, f"not a chitchat checkpoint (no model_config); {REPAIR}")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, dict]:
    """The model in eval mode on `device`, and the checkpoint dict."""
    ckpt = read_checkpoint(path, device)
    return model_from_checkpoint(path, ckpt, device), ckpt


def model_from_checkpoint(path: str | Path, ckpt: dict, device: str | torch.device = "cpu") -> Seq2Seq:
    """The model of a checkpoint dict already read (read_checkpoint), in eval mode on `device`."""
    path = checkpoint_file(path)
    if ckpt["model_config"].get("type") == "retrieval":
        raise InputError(path, "this is the retrieval baseline (model.type retrieval): it has no network to load")
    try:
        cfg = ModelConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as exc:  # an unknown or a bad key
        raise InputError(path, f"damaged checkpoint, bad model_config ({exc}); {REPAIR}") from None
    if cfg.type == "hf":  # a self-contained HF folder beside model.pt; transformers only for this type
        from chitchat.models.hf import load_hf_model

        return load_hf_model(path.parent / ckpt.get("hf_dir", HF_DIR), cfg, device)
    model = build_model(cfg)
    problem = _weights_problem(model.state_dict(), ckpt.get("state_dict"))
    if problem:  # load_state_dict would say it in many lines, after a traceback
        raise InputError(path, f"{problem}; {REPAIR}")
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def _weights_problem(expected: dict, state: Any) -> str | None:
    """Why the saved weights `state` do not fit a model whose state_dict is `expected`; None if they do."""
    if not isinstance(state, dict):
        return "damaged checkpoint, no weights (state_dict)"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and (not isinstance(state[k], torch.Tensor)
                                                     or state[k].shape != expected[k].shape)]
    found = [f"{what}: {len(keys)}, e.g. {keys[0]}" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of the wrong shape")) if keys]
    return f"its weights do not fit its model_config (tensors {'; '.join(found)})" if found else None


def load_tokenizer(model_dir: str | Path, ckpt: dict):
    """The tokenizer saved with a checkpoint: ours, or the pretrained one for model type hf."""
    model_dir = Path(model_dir)
    directory = (model_dir if model_dir.is_dir() else model_dir.parent) / ckpt.get("tokenizer_dir", "tokenizer")
    if ckpt["model_config"].get("type") == "hf":
        from chitchat.text.hf_tokenizer import HFTokenizer

        return HFTokenizer.load(directory)
    try:
        return Tokenizer.load(directory)
    except InputError as exc:
        raise InputError(exc.path, f"{exc.problem}; {REPAIR}") from None
    except Exception as exc:  # json, tokenizers and sentencepiece raise their own types for a damaged file
        raise InputError(directory, f"damaged tokenizer, cannot load it ({exc.__class__.__name__}); {REPAIR}") from None
