"""The training loop: token-budget batches, gradient accumulation normalized by the target tokens
of the whole window, AdamW, clipping, warmup + decay, periodic validation, early stopping.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from chitchat.models.base import Seq2Seq
from chitchat.training.batching import Example, collate, token_budget_batches


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

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "inverse_sqrt"):
            raise ValueError(f"train.schedule must be constant, cosine or inverse_sqrt, got {self.schedule!r}")
        if self.accum_steps < 1 or self.eval_every < 1 or self.max_tokens < 1:
            raise ValueError("train.accum_steps, train.eval_every and train.max_tokens must be >= 1")


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
               device: torch.device) -> tuple[float, int]:
    """Total unsmoothed NLL and number of target tokens (EOS counted, BOS and pad not)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in token_budget_batches(examples, max_tokens):
        src, tgt = (t.to(device) for t in collate([examples[i] for i in batch], pad_id))
        logits = model(src, tgt[:, :-1])
        total += target_nll(logits, tgt[:, 1:], pad_id).item()
        count += int((tgt[:, 1:] != pad_id).sum())
    model.train(was_training)
    return total, count


def backward_window(model: Seq2Seq, window: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int,
                    smoothing: float, device: torch.device) -> tuple[float, int]:
    """Accumulate gradients of one optimizer step's micro-batches; return (NLL sum, target tokens).

    The loss is normalized by the target tokens of the whole window, not averaged per micro-batch,
    so the gradient equals that of one big batch whatever the split.
    """
    n_tokens = sum(int((tgt[:, 1:] != pad_id).sum()) for _, tgt in window)
    nll_sum = 0.0
    for src, tgt in window:
        src, tgt = src.to(device), tgt.to(device)
        logits = model(src, tgt[:, :-1])
        loss = target_nll(logits, tgt[:, 1:], pad_id, smoothing)
        (loss / n_tokens).backward()
        nll = loss if smoothing == 0 else target_nll(logits.detach(), tgt[:, 1:], pad_id)
        nll_sum += nll.item()
    return nll_sum, n_tokens


def train(model: Seq2Seq, train_ex: Sequence[Example], valid_ex: Sequence[Example], cfg: TrainConfig,
          pad_id: int, device: torch.device, log: Callable[[int, dict], None] | None = None,
          progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Train in place; on return the model holds the weights of the best validation loss.

    `log(step, values)` receives train and validation losses (for dvclive); `progress(step,
    total, values)` drives a progress bar.
    """
    seed_everything(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(token_budget_batches(train_ex, cfg.max_tokens, cfg.seed)) / cfg.accum_steps)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, total_steps))

    def validate() -> float:
        nll, n = corpus_nll(model, valid_ex, pad_id, cfg.max_tokens, device)
        return nll / max(1, n)

    best_loss, best_step, best_state = math.inf, 0, None
    bad_evals, step, tokens, train_loss = 0, 0, 0, math.nan
    stopped_early = stopped_by_time = False
    start = time.perf_counter()
    deadline = start + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf

    for epoch in range(cfg.epochs):
        batches = token_budget_batches(train_ex, cfg.max_tokens, cfg.seed + epoch)
        for w in range(0, len(batches), cfg.accum_steps):
            window = [collate([train_ex[i] for i in b], pad_id) for b in batches[w : w + cfg.accum_steps]]
            nll_sum, n_tokens = backward_window(model, window, pad_id, cfg.label_smoothing, device)
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += n_tokens
            train_loss = nll_sum / n_tokens
            values = {"train/loss": train_loss, "train/lr": sched.get_last_lr()[0]}
            out_of_time = time.perf_counter() > deadline
            if step % cfg.eval_every == 0 or out_of_time:
                values["valid/loss"] = val = validate()
                if val < best_loss:
                    best_loss, best_step, bad_evals = val, step, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_evals += 1
            if log:
                log(step, values)
            if progress:
                progress(step, total_steps, {**values, "tok/s": tokens / (time.perf_counter() - start)})
            if cfg.patience and bad_evals >= cfg.patience:
                stopped_early = True
            stopped_by_time = out_of_time
            if stopped_early or stopped_by_time:
                break
        if stopped_early or stopped_by_time:
            break

    if step % cfg.eval_every != 0 and not stopped_by_time:  # the last steps were never validated
        val = validate()
        if log:
            log(step, {"valid/loss": val})
        if val < best_loss:
            best_loss, best_step, best_state = val, step, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    return TrainResult(step, round(step / max(1, steps_per_epoch), 3), best_step, best_loss, train_loss,
                       tokens, seconds, stopped_early, stopped_by_time)
