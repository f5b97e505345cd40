"""Resume files: the full training state saved every train.checkpoint_every steps, restored only
by a run with the same fingerprint (params and data), never mixed into another run."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from chitchat.core.io import atomic_path
from chitchat.models.base import Seq2Seq
from chitchat.text.prompt import Example
from chitchat.training.precision import Precision


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to go on exactly."""

    epoch: int = 0
    window: int = 0  # index of the next batch in this epoch's batch list
    step: int = 0
    tokens: int = 0
    train_loss: float = math.nan
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict | None = None
    bad_evals: int = 0
    skipped_steps: int = 0  # fp16 steps skipped because a gradient overflowed
    history: list = field(default_factory=list)  # (step, values) already logged, replayed on resume


def fingerprint(model: Seq2Seq, train_ex: Sequence[Example], cfg) -> str:
    """Identifies a run: a resume file from other params or data is ignored, never mixed in."""
    run = {k: v for k, v in vars(cfg).items() if k != "max_minutes"}
    data = [len(train_ex), sum(len(e.src) + len(e.tgt) for e in train_ex), train_ex[0] if train_ex else None]
    text = json.dumps([run, repr(getattr(model, "cfg", None)), repr(data)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_resume(path: Path, fp: str, model, opt, sched, state: TrainState, precision: Precision) -> None:
    blob = {"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": precision.state_dict(), "state": vars(state),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_resume(path: Path | None, fp: str, model, opt, sched, precision: Precision) -> TrainState | None:
    """Restore a run killed mid-way, if `path` holds one with the same fingerprint."""
    if path is None or not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a damaged resume file only costs the restart
        return None
    if blob.get("fingerprint") != fp:
        return None
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    precision.load_state_dict(blob.get("scaler", {}))
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return TrainState(**blob["state"])
