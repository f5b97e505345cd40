"""Two gloo processes on the CPU reach the weights one process reaches with the same global batch."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chitchat.training.loop import TrainConfig, train
from test_training import PAD, examples, model

# accum_steps 3 per rank × 2 ranks = 6 micro-batches per step; an uneven tail window leaves one
# rank without a micro-batch at times, which must not hang or change the result.
CFG = dict(epochs=3, max_tokens=96, lr=5e-3, warmup_steps=3, eval_every=4, patience=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        m = model()
        steps = []
        train(m, examples(90, 0), examples(20, 1), TrainConfig(accum_steps=3, **CFG), PAD,
              torch.device("cpu"), log=lambda s, v: steps.append((s, v)), rank=rank, world=world)
        if rank == 0:
            torch.save({"state": m.state_dict(), "log": steps}, out)
        else:
            assert steps == []  # only rank 0 logs
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)

    single = model()
    torch.set_num_threads(1)
    log = []
    train(single, examples(90, 0), examples(20, 1), TrainConfig(accum_steps=6, **CFG), PAD,
          torch.device("cpu"), log=lambda s, v: log.append((s, v)))
    assert [s for s, _ in ddp["log"]] == [s for s, _ in log]
    for (_, a), (_, b) in zip(ddp["log"], log):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a), (a, b)
    for name, value in single.state_dict().items():
        assert torch.allclose(ddp["state"][name], value, atol=1e-5), name
