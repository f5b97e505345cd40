"""Mixed precision: autocast to bf16 or fp16, with a gradient scaler for fp16.

`auto` picks bf16 on a CUDA device that supports it, fp16 (scaled) on an older one, and fp32 on the
CPU, where runs must stay deterministic. bf16 and fp16 can also be asked for on the CPU (autocast
supports both there), which is how the tests exercise this path on machines without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """How forward passes are cast and backward passes scaled for one run."""

    name: str  # fp32 | bf16 | fp16 (resolved, never auto)
    device_type: str  # cpu | cuda
    scaler: torch.amp.GradScaler | None = None  # fp16 only: keeps small gradients from underflowing

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self):
        """Context for forward passes; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, opt: torch.optim.Optimizer, params, clip_norm: float) -> bool:
        """Clip (on unscaled gradients) and step; False when fp16 overflowed and the step was skipped."""
        if self.scaler is None:
            if clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            opt.step()
            return True
        self.scaler.unscale_(opt)
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale only drops after an inf/nan gradient

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The precision a run uses on `device` for the `train.precision` value `name`."""
    if name not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)
