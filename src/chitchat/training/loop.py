"""The training loop: token-budget batches, gradient accumulation normalized by the target tokens
of the whole window, AdamW, clipping, warmup + decay, periodic validation, early stopping.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from chitchat.models.base import Seq2Seq
from chitchat.text.prompt import Example
from chitchat.training.batching import collate, token_budget_batches
from chitchat.training.precision import PRECISIONS, Precision, resolve_precision
from chitchat.training.resume import TrainState, fingerprint, load_resume, save_resume


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
    max_steps: int = 0  # optimizer steps at most, the schedule ending there (0 = epochs decide); deterministic
    checkpoint_every: int = 0  # steps between resume checkpoints; 0 = no resume
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training forward/backward
    threads: int = 0  # CPU threads of torch's kernels; 0 = every CPU this process may use (set_cpu_threads)

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "inverse_sqrt"):
            raise ValueError(f"train.schedule must be constant, cosine or inverse_sqrt, got {self.schedule!r}")
        if self.max_steps < 0:
            raise ValueError(f"train.max_steps must be >= 0 (0 = no limit), got {self.max_steps}")
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
    resumed_from_step: int = 0  # the checkpoint's step when the run went on from a resume file, else 0


def set_cpu_threads(threads: int, processes: int = 1) -> int:
    """Fix the thread count of torch's CPU kernels and return it: 0 = every CPU this process may use,
    shared out among `processes` on this machine (torchrun's processes).

    A CPU run's numbers depend on it: matrix products and reductions split their sums across the
    threads, so one thread and two differ in the 7th digit of the loss from step 3 on (measured on
    the default GRU). Set here, OMP_NUM_THREADS or MKL_NUM_THREADS in the environment change nothing.
    """
    if threads < 0:
        raise ValueError(f"train.threads must be >= 0 (0 = every CPU), got {threads}")
    if not threads:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cpus // max(1, processes))
    torch.set_num_threads(threads)
    return threads


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


def train(model: Seq2Seq, train_ex: Sequence[Example], valid_ex: Sequence[Example], cfg: TrainConfig,
          pad_id: int, device: torch.device, log: Callable[[int, dict], None] | None = None,
          progress: Callable[[int, int, dict], None] | None = None,
          resume_path: Path | None = None, rank: int = 0, world: int = 1,
          say: Callable[[str], None] | None = None) -> TrainResult:
    """Train in place; on return the model holds the weights of the best validation loss.

    `log(step, values)` receives train and validation losses (for dvclive); `progress(step,
    total, values)` drives a progress bar. With `resume_path` and `cfg.checkpoint_every`, the full
    training state is saved there every so many steps, and a run started again with the same
    params and data continues from it (the logged history is replayed to `log` first); one from
    other params or data is set aside. `say` gets that line. The result's totals (steps, tokens,
    seconds) count the whole run, the steps before the resume included.

    With `world` > 1 (a process group already initialized, see distributed.py) the model is
    wrapped in DistributedDataParallel; only rank 0 logs, reports progress and saves state.
    `cfg.precision` picks autocast (and a grad scaler for fp16); `cfg.compile` runs the training
    forward and backward through torch.compile (validation and decoding use the plain module).
    """
    run = _Run(model, train_ex, valid_ex, cfg, pad_id, device, log, progress, resume_path, rank, world, say)
    run.run_epochs()
    return run.finish()


def _wrap(model: Seq2Seq, cfg: TrainConfig, device: torch.device, world: int):
    """The module the training steps call: DDP-wrapped when world > 1, compiled when cfg.compile."""
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net, dynamic=True)  # token-budget batches vary in shape: one graph for all
    return net


class _Run:
    """One training run's parts (model, optimizer, schedule, state), so each phase is one method."""

    def __init__(self, model, train_ex, valid_ex, cfg: TrainConfig, pad_id: int, device: torch.device,
                 log, progress, resume_path: Path | None, rank: int, world: int, say=None):
        seed_everything(cfg.seed)
        model.to(device).train()
        self.model, self.train_ex, self.valid_ex, self.cfg, self.pad_id = model, train_ex, valid_ex, cfg, pad_id
        self.device, self.rank, self.world, self.resume_path = device, rank, world, resume_path
        self.main = rank == 0
        self.step_size = cfg.accum_steps * world  # micro-batches per optimizer step, all ranks together
        self.net = _wrap(model, cfg, device, world)
        self.precision = resolve_precision(cfg.precision, device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        batches = len(token_budget_batches(train_ex, cfg.max_tokens, cfg.seed))
        self.steps_per_epoch = math.ceil(batches / self.step_size)
        total_steps = max(1, self.steps_per_epoch * cfg.epochs)
        total_steps = self.total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg, total_steps))
        self.fp = fingerprint(model, train_ex, cfg, valid_ex)
        state, note = load_resume(resume_path, self.fp, model, self.opt, self.sched, self.precision)
        if note and say and self.main:
            say(note)
        self.st = state or TrainState()
        self.resumed_from_step = self.st.step
        self.log, self.progress = (log, progress) if self.main else (None, None)
        for past_step, past_values in self.st.history:
            if self.log:
                self.log(past_step, past_values)
        self.stopped_early = self.stopped_by_time = self.stopped_by_steps = False
        self.start = time.perf_counter()
        self.tokens_at_start, self.seconds_before = self.st.tokens, self.st.seconds
        self.deadline = self.start + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf

    def validate(self) -> float:
        """Rank 0 scores the validation set; every rank gets its number."""
        val = math.nan
        if self.main:
            nll, n = corpus_nll(self.model, self.valid_ex, self.pad_id, self.cfg.max_tokens, self.device,
                                self.precision)
            val = nll / max(1, n)
        return broadcast(val, 0, self.world, self.device)

    def record(self, values: dict) -> None:
        self.st.history.append((self.st.step, values))
        if self.log:
            self.log(self.st.step, values)

    def run_epochs(self) -> None:
        """Optimizer steps until the epochs are done, patience runs out or time is up."""
        st = self.st
        while st.epoch < self.cfg.epochs and not (self.stopped_early or self.stopped_by_time or self.stopped_by_steps):
            batches = token_budget_batches(self.train_ex, self.cfg.max_tokens, self.cfg.seed + st.epoch)
            while st.window < len(batches):
                if self.after_step(self.optimizer_step(batches)):
                    break
            else:
                st.epoch, st.window = st.epoch + 1, 0

    def optimizer_step(self, batches: list[list[int]]) -> dict:
        """One optimizer step over the next window of `batches`; the values it logs."""
        st, cfg = self.st, self.cfg
        window = [collate([self.train_ex[i] for i in b], self.pad_id)
                  for b in batches[st.window : st.window + self.step_size]]
        nll_sum, n_tokens = backward_window(self.net, window, self.pad_id, cfg.label_smoothing, self.device,
                                            self.rank, self.world, self.precision)
        nll_sum = all_sum(nll_sum, self.world, self.device)
        st.skipped_steps += not self.precision.step(self.opt, self.model.parameters(), cfg.clip_norm)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        st.window += self.step_size
        st.step += 1
        st.tokens += n_tokens
        st.train_loss = nll_sum / n_tokens
        return {"train/loss": st.train_loss, "train/lr": self.sched.get_last_lr()[0]}

    def after_step(self, values: dict) -> bool:
        """Validate when due, log, report progress, save the resume state; True when training stops."""
        st, cfg = self.st, self.cfg
        out_of_time = bool(broadcast(float(time.perf_counter() > self.deadline), 0, self.world, self.device))
        if st.step % cfg.eval_every == 0 or out_of_time:
            values["valid/loss"] = val = self.validate()
            if val < st.best_loss:
                st.best_loss, st.best_step, st.bad_evals = val, st.step, 0
                st.best_state = copy.deepcopy(self.model.state_dict())
            else:
                st.bad_evals += 1
        self.record(values)
        if self.progress:
            speed = (st.tokens - self.tokens_at_start) / (time.perf_counter() - self.start)
            self.progress(st.step, self.total_steps, {**values, "tok/s": speed})
        self.stopped_early = bool(cfg.patience and st.bad_evals >= cfg.patience)
        self.stopped_by_time = out_of_time
        self.stopped_by_steps = bool(cfg.max_steps and st.step >= cfg.max_steps)
        if self.stopped_early or self.stopped_by_time or self.stopped_by_steps:
            return True
        if self.main and self.resume_path is not None and cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
            st.seconds = self.seconds()
            save_resume(self.resume_path, self.fp, self.model, self.opt, self.sched, st, self.precision)
        return False

    def finish(self) -> TrainResult:
        """Validate the last steps if they were not, keep the best weights, drop the resume file."""
        st = self.st
        if st.step % self.cfg.eval_every != 0 and not self.stopped_by_time:  # the last steps were never validated
            val = self.validate()
            self.record({"valid/loss": val})
            if val < st.best_loss:
                st.best_loss, st.best_step, st.best_state = val, st.step, copy.deepcopy(self.model.state_dict())
        if st.best_state is not None:
            self.model.load_state_dict(st.best_state)
        if self.main and self.resume_path is not None and self.resume_path.exists():
            self.resume_path.unlink()  # finished: a later run must start afresh
        return TrainResult(st.step, round(st.step / max(1, self.steps_per_epoch), 3), st.best_step, st.best_loss,
                           st.train_loss, st.tokens, self.seconds(), self.stopped_early,
                           self.stopped_by_time, self.precision.name, st.skipped_steps, self.resumed_from_step)

    def seconds(self) -> float:
        """Training time of the whole run: this process's and, after a resume, the time saved with the checkpoint."""
        return self.seconds_before + time.perf_counter() - self.start
