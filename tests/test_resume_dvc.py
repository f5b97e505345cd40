"""An interrupted train stage under DVC, end to end: `kill -9` of `dvc repro` mid-training, then the
documented command (`dvc repro` again) resumes from the last checkpoint when params and data are
unchanged, gives the weights, curves and totals of a run never interrupted, and a checkpoint from
other params is set aside, never resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_pipeline_e2e import GIT_ENV, TINY, reproduced_copy, sh

# A few hundred steps of the tiny model, a checkpoint every 4: slow enough to be killed mid-way.
PARAMS = {**TINY, "train": {**TINY["train"], "epochs": 6, "max_tokens": 256, "checkpoint_every": 4,
                            "eval_every": 8, "patience": 0}}
TIMING = {"seconds", "tokens_per_second"}


def set_lr(root, lr: float) -> None:
    path = root / "params.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index("\ntrain:")
    head, tail = text[:start], text[start:]
    line = next(li for li in tail.splitlines() if li.strip().startswith("lr:"))
    path.write_text(head + tail.replace(line, f"  lr: {lr}", 1), encoding="utf-8")


def kill_mid_training(root, *args) -> int:
    """Start `dvc repro *args`, SIGKILL its whole process group once the resume file has been
    written twice (training is past its second checkpoint), return the checkpoint count seen."""
    resume = root / "data" / "resume" / "train.pt"
    resume.unlink(missing_ok=True)
    proc = subprocess.Popen(["dvc", "repro", *args], cwd=root, env={**os.environ, **GIT_ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen, last, deadline = 0, None, time.monotonic() + 300
    try:
        while seen < 2 and time.monotonic() < deadline and proc.poll() is None:
            stamp = resume.stat().st_mtime_ns if resume.exists() else None
            if stamp is not None and stamp != last:
                seen, last = seen + 1, stamp
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen == 2 and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    return seen


def weights(root):
    return torch.load(root / "data" / "model" / "model.pt", weights_only=True)["state_dict"]


def curve(root, name="train/loss"):
    """The rows of a dvclive curve (step, value; dvclive writes no timestamps here)."""
    return (root / "metrics" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()


def summary(root):
    return json.loads((root / "metrics" / "train.json").read_text())


def repro(root, *args):
    proc = subprocess.run(["dvc", "repro", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="process groups and SIGKILL as on Linux")
def test_kill_9_then_dvc_repro_resumes_and_equals_an_uninterrupted_run(tmp_path):
    root = reproduced_copy(tmp_path, PARAMS)
    resume = root / "data" / "resume" / "train.pt"
    assert not resume.exists()  # a finished run removes its resume file

    set_lr(root, 0.004)  # params no finished run had: DVC's run cache cannot answer for them
    kill_mid_training(root)
    assert resume.is_file()
    assert not (root / "data" / "model").exists()  # DVC removed the outputs before the run
    assert not (root / "metrics" / "live" / "plots").exists()  # the killed run's curves never land there
    out = repro(root)  # the documented command after an interruption
    assert "resuming from data/resume/train.pt at step" in out
    resumed = summary(root)
    step = int(out.split("at step ")[1].split()[0])
    assert resumed["resumed_from_step"] == step >= 8 and not resume.exists()
    resumed_weights, resumed_curve = weights(root), curve(root)

    repro(root, "-f", "-s", "train")  # the same params trained from scratch, never interrupted
    clean = summary(root)
    assert clean["resumed_from_step"] == 0
    assert {k: v for k, v in clean.items() if k not in TIMING | {"resumed_from_step"}} == \
        {k: v for k, v in resumed.items() if k not in TIMING | {"resumed_from_step"}}  # totals: the whole run
    assert curve(root) == resumed_curve and len(resumed_curve) == clean["steps"] + 1  # header + every step
    clean_weights = weights(root)
    assert clean_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(clean_weights[k], resumed_weights[k]) for k in clean_weights)  # bit for bit

    kill_mid_training(root, "-f", "-s", "train")  # leaves a checkpoint of lr 0.004 behind ...
    set_lr(root, 0.005)  # ... which a run with other params must not pick up
    out = repro(root, "-s", "train")
    assert "data/resume/train.pt is from a run with other params or data: set aside as train.stale.pt" in out
    assert summary(root)["resumed_from_step"] == 0 and (root / "data" / "resume" / "train.stale.pt").is_file()

    set_lr(root, 0.004)  # back to the finished run's params: DVC restores or retrains, the same model either way
    repro(root, "-s", "train")
    back = weights(root)
    assert all(torch.equal(back[k], clean_weights[k]) for k in clean_weights)
    assert "up to date" in sh("dvc", "status", "train", cwd=root)
