"""Load on the web app: N concurrent clients x M requests to POST /api/answer over loopback.

The server is `chitchat serve` in a subprocess (its own interpreter, so client and server do not
share a GIL), started once with request batching (`--max-batch`, default 16) and once without
(`--max-batch 1`: every request decodes alone), side by side on the same model and questions.
Each client sends its requests one after another; the table gives errors (anything but a 200),
client-side latency percentiles, requests per second and questions per decoder call. Without
`--model`, the tiny GRU the tests train (tests/test_inference.py) is built in a temp dir first.
Only 127.0.0.1 is ever contacted; every request has a timeout, so the run always ends.

    python benchmarks/serve_load.py                         # tiny model, 50 clients x 20 requests
    python benchmarks/serve_load.py --model data/model --strategy beam
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx
import typer

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Как дела?", "Что приготовить на ужин?", "Как завести машину в мороз?", "Расскажи анекдот!",
    "Сколько варить яйцо?", "Почему машина не заводится?", "Ты кто такой?", "Как испечь блины?",
    "Какие шины лучше на зиму?", "Привет, как жизнь?", "Что добавить в салат?", "Стоит ли покупать мотоцикл?",
]
CATEGORIES = [None, "Юмор", "Еда, Кулинария", "Авто, Мото"]
app = typer.Typer(add_completion=False)


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from test_inference import build_tiny_model

    return build_tiny_model(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch: int, port: int, threads: int) -> subprocess.Popen:
    """`chitchat serve` on 127.0.0.1:port, returned once /health answers."""
    cmd = [sys.executable, "-m", "chitchat.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--threads", str(threads), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve_load: the server exited: {proc.stderr.read().strip()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve_load: the server did not answer /health within 120 s")


async def load(base: str, clients: int, requests: int, decoding: dict, timeout: float) -> dict:
    """Every client sends `requests` questions in turn; latencies in ms of the 200s, and the errors."""
    latencies: list[float] = []
    inside: list[float] = []  # the server's own latency_ms: queueing for the model and decoding
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        async def client(k: int) -> None:
            for i in range(requests):
                j = k * requests + i
                body = {"question": QUESTIONS[j % len(QUESTIONS)], "category": CATEGORIES[j % len(CATEGORIES)],
                        "decoding": decoding}
                start = time.perf_counter()
                try:
                    r = await http.post("/api/answer", json=body)
                    key = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key is None:
                    latencies.append((time.perf_counter() - start) * 1000)
                    inside.append(r.json()["latency_ms"])
                else:
                    errors[key] = errors.get(key, 0) + 1

        for k in range(min(clients, 4)):  # warm-up: first requests pay for allocation
            await http.post("/api/answer", json={"question": QUESTIONS[k], "decoding": decoding})
        calls_before = (await http.get("/health")).json()["decoder_calls"]
        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - start
        calls = (await http.get("/health")).json()["decoder_calls"] - calls_before
    return {"latencies": latencies, "inside": inside, "errors": errors, "wall": wall, "calls": calls}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0])[0]


@app.command()
def main(
    model: Optional[Path] = typer.Option(None, "--model", help="model folder (default: the tests' tiny GRU)"),
    clients: int = typer.Option(50, help="concurrent clients"),
    requests: int = typer.Option(20, help="requests per client, one after another"),
    max_batch: int = typer.Option(16, "--max-batch", help="the batching server's cap (compared with 1)"),
    strategy: str = typer.Option("greedy", help="greedy | beam | nucleus"),
    max_new_tokens: int = typer.Option(24, help="longest answer, in tokens"),
    repeats: int = typer.Option(2, help="passes per server, interleaved; the one with more requests/s counts"),
    threads: int = typer.Option(0, help="the server's --threads (0: one fewer than the cores)"),
    timeout: float = typer.Option(120.0, help="seconds one request may take before it counts as an error"),
) -> None:
    decoding = {"strategy": strategy, "max_new_tokens": max_new_tokens}
    runs: dict[int, list[dict]] = {1: [], max_batch: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = model or tiny_model(Path(tmp))
        for _ in range(repeats):  # interleaved, so a busy spell on the machine hits both alike
            for batch in (1, max_batch):
                port = free_port()
                proc = start_server(folder, batch, port, threads)
                try:
                    runs[batch].append(asyncio.run(load(f"http://127.0.0.1:{port}", clients, requests, decoding,
                                                        timeout)))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                print(f"max_batch {batch}: {len(runs[batch][-1]['latencies']) / runs[batch][-1]['wall']:.1f} "
                      "requests/s", flush=True)

    print(f"\n{clients} clients x {requests} requests on 127.0.0.1, {strategy}, max_new_tokens {max_new_tokens}, "
          f"model {'tiny GRU (tests)' if model is None else model}; the pass with more requests/s of {repeats}\n")
    print("| server | requests | errors | p50 ms | p95 ms | requests/s | server p50 ms | server p95 ms "
          "| questions per decoder call |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = {}
    for batch in (max_batch, 1):
        r = best[batch] = max(runs[batch], key=lambda run: len(run["latencies"]) / run["wall"])
        ok, errors = r["latencies"], r["errors"]
        shown = str(sum(errors.values())) + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else "")
        name = f"batching (--max-batch {batch})" if batch > 1 else "one at a time (--max-batch 1)"
        print(f"| {name} | {len(ok) + sum(errors.values()):,} | {shown} | {percentile(ok, 50):,.1f} "
              f"| {percentile(ok, 95):,.1f} | {len(ok) / r['wall']:,.1f} | {percentile(r['inside'], 50):,.1f} "
              f"| {percentile(r['inside'], 95):,.1f} | {len(ok) / max(r['calls'], 1):.1f} |")
    rate = {b: len(r["latencies"]) / r["wall"] for b, r in best.items()}
    print(f"\nbatching / one at a time: x{rate[max_batch] / rate[1]:.2f} requests/s, "
          f"p50 x{percentile(best[1]['latencies'], 50) / percentile(best[max_batch]['latencies'], 50):.2f} lower")


if __name__ == "__main__":
    app()
