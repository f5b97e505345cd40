"""Bit-identical CPU training: two processes with the same seed, params and data give the same
weights for every model type, whatever OMP_NUM_THREADS / MKL_NUM_THREADS say; the thread count
is what decides (train.threads), and it does change the numbers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_hf import build_tiny_pretrained

SCRIPT = Path(__file__).with_name("determinism_run.py")


def run(out: Path, pretrained: Path, threads: int, **env) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(pretrained), str(threads)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return build_tiny_pretrained(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to train on two threads")
def test_two_processes_train_every_model_type_to_the_same_weights(tmp_path, pretrained):
    first = run(tmp_path / "a.pt", pretrained, 2)
    second = run(tmp_path / "b.pt", pretrained, 2, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert set(first) == {"gru", "lstm", "cnn", "transformer", "lm", "hf"}
    for kind in first:
        assert identical(first[kind], second[kind]), kind
    one = run(tmp_path / "c.pt", pretrained, 1)  # the cause of the divergence in issue 20: another count
    assert not all(identical(first[kind], one[kind]) for kind in first)
