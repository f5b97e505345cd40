"""Save and load a trained model with everything needed to use it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chitchat.errors import InputError
from chitchat.io import atomic_path
from chitchat.models import ModelConfig, Seq2Seq, build_model

CHECKPOINT_NAME = "model.pt"


def save_checkpoint(path: str | Path, model: Seq2Seq, cfg: ModelConfig, **extra: Any) -> None:
    """Weights, model config and `extra` (tokenizer dir, length limits, train state) in one file."""
    state = {"model_config": cfg.as_dict(), "state_dict": model.state_dict(), **extra}
    # Through a file object: torch.save(path) names the zip's records after the file, and the temp
    # file's name is random, so the same weights would hash differently on every run.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, dict]:
    """The model in eval mode on `device`, and the checkpoint dict."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise InputError(path, "no trained model here (run `dvc repro` first)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise InputError(path, f"cannot load checkpoint ({exc.__class__.__name__})") from None
    model = build_model(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
