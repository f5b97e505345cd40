"""The training loop: token-budget batches, gradient accumulation normalized by the target tokens
of the whole window, AdamW, clipping, warmup + decay, periodic validation, early stopping.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from chitchat.core.io import atomic_path
from chitchat.models.base import Seq2Seq
from chitchat.text.prompt import Example
from chitchat.training.batching import collate, token_budget_batches
from chitchat.training.precision import PRECISIONS, Precision, resolve_precision


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 42  # seeds python, torch and the batch order
    device: str = "auto"  # auto | cpu | cuda
    epochs: int = 20  # passes over the training split (early stopping may end sooner)
    max_tokens: int = 2048  # token budget of one micro-batch (batch size * longest sequence)
    accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 50  # linear warmup from 0 to lr
    schedule: str = "cosine"  # constant | cosine | inverse_sqrt, after warmup
    clip_norm: float = 1.0  # gradient norm clip; 0 disables
    label_smoothing: float = 0.0  # training loss only; reported losses are unsmoothed NLL
    eval_every: int = 50  # optimizer steps between validations
    patience: int = 5  # validations without improvement before stopping; 0 never stops early
    max_src_len: int = 48  # tokens of category + question + eos
    max_tgt_len: int = 48  # tokens of bos + answer + eos
    max_minutes: float = 0  # wall-clock budget; 0 means none (a budget makes runs non-deterministic)
    checkpoint_every: int = 0  # steps between resume checkpoints; 0 = no resume
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training forward/backward

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "inverse_sqrt"):
            raise ValueError(f"train.schedule must be constant, cosine or inverse_sqrt, got {self.schedule!r}")
        if self.accum_steps < 1 or self.eval_every < 1 or self.max_tokens < 1:
            raise ValueError("train.accum_steps, train.eval_every and train.max_tokens must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class TrainResult:
    steps: int
    epochs: float
    best_step: int
    best_valid_loss: float
    final_train_loss: float
    train_tokens: int
    seconds: float
    stopped_early: bool
    stopped_by_time: bool
    precision: str = "fp32"
    skipped_steps: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no CUDA device is available")
    return torch.device(name)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at `step` (0-based)."""
    warm = max(1, cfg.warmup_steps)
    if step < cfg.warmup_steps:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "inverse_sqrt":
        return math.sqrt(warm / (step + 1))
    return 1.0


def target_nll(logits: torch.Tensor, targets: torch.Tensor, pad_id: int, smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over non-pad targets. logits (b, t, v), targets (b, t)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=pad_id, reduction="sum", label_smoothing=smoothing)


@torch.no_grad()
def corpus_nll(model: Seq2Seq, examples: Sequence[Example], pad_id: int, max_tokens: int,
               device: torch.device, precision: Precision | None = None) -> tuple[float, int]:
    """Total unsmoothed NLL and number of target tokens (EOS counted, BOS and pad not)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in token_budget_batches(examples, max_tokens):
        src, tgt = (t.to(device) for t in collate([examples[i] for i in batch], pad_id))
        with precision.autocast() if precision else contextlib.nullcontext():
            logits = model(src, tgt[:, :-1])
        total += target_nll(logits, tgt[:, 1:], pad_id).item()
        count += int((tgt[:, 1:] != pad_id).sum())
    model.train(was_training)
    return total, count


def backward_window(model, window: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int,
                    smoothing: float, device: torch.device, rank: int = 0, world: int = 1,
                    precision: Precision | None = None) -> tuple[float, int]:
    """Accumulate gradients of one optimizer step's micro-batches; return (NLL sum, target tokens).

    The loss is normalized by the target tokens of the whole window, not averaged per micro-batch,
    so the gradient equals that of one big batch whatever the split. Under DDP (`world` > 1,
    `model` wrapped) this rank trains on window[rank::world]; gradients are averaged across ranks,
    hence the factor `world`. The NLL sum is this rank's share. `precision` casts the forward pass
    and scales the backward one (fp16).
    """
    precision = precision or Precision("fp32", device.type)
    n_tokens = sum(int((tgt[:, 1:] != pad_id).sum()) for _, tgt in window)
    share = list(window[rank::world])
    scale = float(world)
    if not share:  # every rank must run a backward for DDP's all-reduce: one that adds nothing
        share, scale = [window[0]], 0.0
    nll_sum = 0.0
    for i, (src, tgt) in enumerate(share):
        src, tgt = src.to(device), tgt.to(device)
        sync = i == len(share) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with precision.autocast():
                logits = model(src, tgt[:, :-1])
            loss = target_nll(logits, tgt[:, 1:], pad_id, smoothing)
            precision.backward(loss * (scale / n_tokens))
        if scale:
            nll = loss if smoothing == 0 else target_nll(logits.detach(), tgt[:, 1:], pad_id)
            nll_sum += nll.item()
    return nll_sum, n_tokens


def broadcast(value: float, src: int, world: int, device: torch.device) -> float:
    """Rank `src`'s value on every rank, so decisions like early stopping agree."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src)
    return float(t.item())


def all_sum(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


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


def fingerprint(model: Seq2Seq, train_ex: Sequence[Example], cfg: TrainConfig) -> str:
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


def train(model: Seq2Seq, train_ex: Sequence[Example], valid_ex: Sequence[Example], cfg: TrainConfig,
          pad_id: int, device: torch.device, log: Callable[[int, dict], None] | None = None,
          progress: Callable[[int, int, dict], None] | None = None,
          resume_path: Path | None = None, rank: int = 0, world: int = 1) -> TrainResult:
    """Train in place; on return the model holds the weights of the best validation loss.

    `log(step, values)` receives train and validation losses (for dvclive); `progress(step,
    total, values)` drives a progress bar. With `resume_path` and `cfg.checkpoint_every`, the full
    training state is saved there every so many steps, and a run started again with the same
    params and data continues from it (the logged history is replayed to `log` first).

    With `world` > 1 (a process group already initialized, see distributed.py) the model is
    wrapped in DistributedDataParallel; only rank 0 logs, reports progress and saves state.
    `cfg.precision` picks autocast (and a grad scaler for fp16); `cfg.compile` runs the training
    forward and backward through torch.compile (validation and decoding use the plain module).
    """
    seed_everything(cfg.seed)
    model.to(device).train()
    main = rank == 0
    step_size = cfg.accum_steps * world  # micro-batches per optimizer step, all ranks together
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net, dynamic=True)  # token-budget batches vary in shape: one graph for all
    precision = resolve_precision(cfg.precision, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(token_budget_batches(train_ex, cfg.max_tokens, cfg.seed)) / step_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, total_steps))
    fp = fingerprint(model, train_ex, cfg)
    st = load_resume(resume_path, fp, model, opt, sched, precision) or TrainState()
    if not main:
        log = progress = None
    for past_step, past_values in st.history:
        if log:
            log(past_step, past_values)

    def validate() -> float:
        """Rank 0 scores the validation set; every rank gets its number."""
        val = math.nan
        if main:
            nll, n = corpus_nll(model, valid_ex, pad_id, cfg.max_tokens, device, precision)
            val = nll / max(1, n)
        return broadcast(val, 0, world, device)

    def record(values: dict) -> None:
        st.history.append((st.step, values))
        if log:
            log(st.step, values)

    stopped_early = stopped_by_time = False
    start = time.perf_counter()
    tokens_at_start = st.tokens
    deadline = start + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf

    while st.epoch < cfg.epochs and not (stopped_early or stopped_by_time):
        batches = token_budget_batches(train_ex, cfg.max_tokens, cfg.seed + st.epoch)
        while st.window < len(batches):
            window = [collate([train_ex[i] for i in b], pad_id) for b in batches[st.window : st.window + step_size]]
            nll_sum, n_tokens = backward_window(net, window, pad_id, cfg.label_smoothing, device, rank, world,
                                                precision)
            nll_sum = all_sum(nll_sum, world, device)
            st.skipped_steps += not precision.step(opt, model.parameters(), cfg.clip_norm)
            sched.step()
            opt.zero_grad(set_to_none=True)
            st.window += step_size
            st.step += 1
            st.tokens += n_tokens
            st.train_loss = nll_sum / n_tokens
            values = {"train/loss": st.train_loss, "train/lr": sched.get_last_lr()[0]}
            out_of_time = bool(broadcast(float(time.perf_counter() > deadline), 0, world, device))
            if st.step % cfg.eval_every == 0 or out_of_time:
                values["valid/loss"] = val = validate()
                if val < st.best_loss:
                    st.best_loss, st.best_step, st.bad_evals = val, st.step, 0
                    st.best_state = copy.deepcopy(model.state_dict())
                else:
                    st.bad_evals += 1
            record(values)
            if progress:
                speed = (st.tokens - tokens_at_start) / (time.perf_counter() - start)
                progress(st.step, total_steps, {**values, "tok/s": speed})
            stopped_early = bool(cfg.patience and st.bad_evals >= cfg.patience)
            stopped_by_time = out_of_time
            if stopped_early or stopped_by_time:
                break
            if main and resume_path is not None and cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                save_resume(resume_path, fp, model, opt, sched, st, precision)
        else:
            st.epoch, st.window = st.epoch + 1, 0

    if st.step % cfg.eval_every != 0 and not stopped_by_time:  # the last steps were never validated
        val = validate()
        record({"valid/loss": val})
        if val < st.best_loss:
            st.best_loss, st.best_step, st.best_state = val, st.step, copy.deepcopy(model.state_dict())
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    if main and resume_path is not None and resume_path.exists():
        resume_path.unlink()  # finished: a later run must start afresh
    seconds = time.perf_counter() - start
    return TrainResult(st.step, round(st.step / max(1, steps_per_epoch), 3), st.best_step, st.best_loss,
                       st.train_loss, st.tokens - tokens_at_start, seconds, stopped_early, stopped_by_time,
                       precision.name, st.skipped_steps)
