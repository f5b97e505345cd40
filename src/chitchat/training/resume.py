"""Resume files: the full training state saved every train.checkpoint_every steps, restored only
by a run with the same fingerprint (params and data), never mixed into another run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from array import array
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
    seconds: float = 0.0  # training time of the steps so far (a killed run's steps after its checkpoint not counted)
    history: list = field(default_factory=list)  # (step, values) already logged, replayed on resume


def fingerprint(model: Seq2Seq, train_ex: Sequence[Example], cfg, valid_ex: Sequence[Example] = ()) -> str:
    """Identifies a run: the train params (the wall-clock budget aside), the model config and every
    token id of the train and valid examples (so the data, the tokenizer and the lengths too). A
    resume file with another fingerprint is set aside, never mixed in."""
    run = {k: v for k, v in vars(cfg).items() if k != "max_minutes"}
    h = hashlib.sha256(json.dumps([run, repr(getattr(model, "cfg", None))], sort_keys=True, default=str).encode())
    for examples in (train_ex, valid_ex):
        h.update(len(examples).to_bytes(8, "little"))
        for e in examples:
            h.update(array("q", [len(e.src), len(e.tgt), *e.src, *e.tgt]).tobytes())
    return h.hexdigest()


def save_resume(path: Path, fp: str, model, opt, sched, state: TrainState, precision: Precision) -> None:
    blob = {"fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": precision.state_dict(), "state": vars(state),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def set_aside_path(path: Path) -> Path:
    """Where a resume file that cannot be used goes: data/resume/train.pt -> data/resume/train.stale.pt."""
    return path.with_name(f"{path.stem}.stale{path.suffix}")


def load_resume(path: Path | None, fp: str, model, opt, sched,
                precision: Precision) -> tuple[TrainState | None, str | None]:
    """Restore a run killed mid-way, if `path` holds one with the same fingerprint; and one line
    for the user. A damaged file or one from other params or data is renamed aside (the last such
    file kept, for a look) and training starts from step 0."""
    if path is None or not path.is_file():
        return None, None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        problem = None if isinstance(blob, dict) and "fingerprint" in blob else "not a resume file"
    except Exception as exc:  # a file cut short by a kill or a full disk: only the restart is lost
        problem, blob = f"damaged ({exc.__class__.__name__})", None
    if problem is None and blob["fingerprint"] != fp:
        problem = "from a run with other params or data"
    if problem is not None:
        aside = set_aside_path(path)
        os.replace(path, aside)
        return None, f"{path} is {problem}: set aside as {aside.name}, training from step 0"
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    precision.load_state_dict(blob.get("scaler", {}))
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    state = TrainState(**blob["state"])
    return state, f"resuming from {path} at step {state.step} (same params and data)"
