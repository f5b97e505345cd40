"""Data-parallel training under `torchrun`: NCCL on GPUs, gloo on CPUs.

Every rank builds the same (seeded) batch list; an optimizer step takes accum_steps * world_size
micro-batches and rank r trains on every world_size-th of them, so N processes reach the weights
one process reaches with N times the accumulation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chitchat.training.loop import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[DistContext, torch.device]:
    """Join the process group `torchrun` describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
