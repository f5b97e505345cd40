"""Load on the web app over loopback: batching on /api/answer, streaming, throughput and overload on /v1.

The server is `chitchat serve` in a subprocess (its own interpreter, so client and server do not
share a GIL). Four sections (`--sections`), each printing a table:

- batching: N concurrent clients x M requests to POST /api/answer, the server started once with
  request batching (`--max-batch`, default 16) and once without (`--max-batch 1`: every request
  decodes alone), side by side on the same model and questions. Each client sends its requests one
  after another; the table gives errors (anything but a 200), client-side latency percentiles,
  requests per second and questions per decoder call.
- streaming: the same requests to POST /v1/chat/completions with `"stream": true` and without, at
  each `--levels` concurrency: time to first token (sending to the first chunk with a non-empty
  `delta.content`) against the whole non-streamed answer's latency, and their ratio.
- throughput: answers/s and generated tokens/s (`usage.completion_tokens` of the non-streamed
  answers) at each `--levels` concurrency, every client sending back to back for `--pass-seconds`
  (or exactly `--pass-requests` requests each).
- overload: a server with a small `--overload-queue` (its --max-queue) and `--overload-clients`
  clients at once, half of them streaming: how many got 200, how many 429 (each must carry a
  Retry-After), and that none got anything else; the exit status is 1 if one did, or if the run
  hung past `--timeout`.

Without `--model`, the tiny GRU the tests train (tests/test_inference.py) is built in a temp dir
first. Only 127.0.0.1 is ever contacted; every request has a timeout, so the run always ends.

    python benchmarks/serve_load.py                         # tiny model, every section
    python benchmarks/serve_load.py --model data/model --strategy beam
    python benchmarks/serve_load.py --model data/model --sections streaming,throughput --levels 1,8,32
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
SECTIONS = ("batching", "streaming", "throughput", "overload")
CHAT = "/v1/chat/completions"
app = typer.Typer(add_completion=False)


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from test_inference import build_tiny_model

    return build_tiny_model(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch: int, port: int, threads: int, max_queue: int = 256) -> subprocess.Popen:
    """`chitchat serve` on 127.0.0.1:port, returned once /health answers."""
    cmd = [sys.executable, "-m", "chitchat.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
           "--threads", str(threads), "--log-level", "warning"]
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty server must never block on a full one
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"serve_load: the server exited: {log.read().strip()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve_load: the server did not answer /health within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


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


def chat_body(j: int, decoding: dict, stream: bool) -> dict:
    """Request j of a pass: the same j gives the same question and category, streamed or not."""
    body = {"messages": [{"role": "user", "content": QUESTIONS[j % len(QUESTIONS)]}], "stream": stream,
            "max_tokens": decoding["max_new_tokens"], "strategy": decoding["strategy"]}
    if CATEGORIES[j % len(CATEGORIES)] is not None:
        body["category"] = CATEGORIES[j % len(CATEGORIES)]
    return body


async def chat_once(http: httpx.AsyncClient, body: dict) -> dict:
    """One /v1/chat/completions request. `outcome`: "200", "429" or what else happened; `ms` until
    the whole answer (streamed: [DONE]); `ttft` ms until the first non-empty delta.content (None:
    none came); `tokens` usage.completion_tokens (non-streamed); `retry_after` of a 429."""
    out = {"outcome": None, "ms": None, "ttft": None, "tokens": 0, "retry_after": None, "stream": body["stream"]}
    start = time.perf_counter()
    try:
        if not body["stream"]:
            r = await http.post(CHAT, json=body)
            if r.status_code == 200:
                out["tokens"] = r.json()["usage"]["completion_tokens"]
        else:
            async with http.stream("POST", CHAT, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                else:
                    done = broken = False
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            break
                        chunk = json.loads(line[len("data: "):])
                        if "error" in chunk:
                            broken = True
                        elif out["ttft"] is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                            out["ttft"] = (time.perf_counter() - start) * 1000
                    if broken or not done:
                        out["outcome"] = "200 with an error in the stream" if broken else "200 without [DONE]"
                        return out
        out["ms"] = (time.perf_counter() - start) * 1000
        out["outcome"] = str(r.status_code)
        if r.status_code == 429:
            out["retry_after"] = r.headers.get("retry-after")
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        out["outcome"] = type(exc).__name__
    return out


async def chat_pass(base: str, clients: int, stream: bool, decoding: dict, seconds: float, per_client: int,
                    timeout: float) -> dict:
    """`clients` clients sending /v1/chat/completions back to back: `per_client` each, or (0) until
    `seconds` have passed (requests in flight then are waited for and counted)."""
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        async def client(k: int) -> None:
            i = 0
            while i < per_client if per_client else time.perf_counter() < stop_at:
                results.append(await chat_once(http, chat_body(k + i * clients, decoding, stream)))
                i += 1

        calls_before = (await http.get("/health")).json()["decoder_calls"]
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - start
        calls = (await http.get("/health")).json()["decoder_calls"] - calls_before
    ok = [r for r in results if r["outcome"] == "200"]
    errors = Counter(r["outcome"] for r in results if r["outcome"] != "200")
    return {"ok": ok, "errors": errors, "wall": wall, "calls": calls, "sent": len(results)}


async def chat_warm_up(base: str, decoding: dict, timeout: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        for stream in (False, True):  # one alone, then a batch of 8: the shapes the passes will use
            await chat_once(http, chat_body(0, decoding, stream))
            await asyncio.gather(*(chat_once(http, chat_body(j, decoding, stream)) for j in range(8)))


async def overload(base: str, clients: int, per_client: int, decoding: dict, timeout: float) -> dict:
    """`clients` clients at once (odd ones streaming), `per_client` requests each back to back,
    a 429 not waited out; results, or `hung` when the whole run took longer than `timeout` + 10 s."""
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:
        async def client(k: int) -> None:
            for i in range(per_client):
                results.append(await chat_once(http, chat_body(k + i * clients, decoding, stream=k % 2 == 1)))

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(clients))), timeout + 10)
            hung = False
        except asyncio.TimeoutError:
            hung = True
        wall = time.perf_counter() - start
        waiting = (await http.get("/health")).json()["waiting"] if not hung else None
    return {"results": results, "hung": hung, "wall": wall, "waiting_after": waiting}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0])[0]


def shown_errors(errors: dict) -> str:
    return str(sum(errors.values())) + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else "")


def batching_section(folder: Path, model_name: str, clients: int, requests: int, max_batch: int, decoding: dict,
                     repeats: int, threads: int, timeout: float) -> None:
    runs: dict[int, list[dict]] = {1: [], max_batch: []}
    for _ in range(repeats):  # interleaved, so a busy spell on the machine hits both alike
        for batch in (1, max_batch):
            port = free_port()
            proc = start_server(folder, batch, port, threads)
            try:
                runs[batch].append(asyncio.run(load(f"http://127.0.0.1:{port}", clients, requests, decoding,
                                                    timeout)))
            finally:
                stop_server(proc)
            print(f"max_batch {batch}: {len(runs[batch][-1]['latencies']) / runs[batch][-1]['wall']:.1f} "
                  "requests/s", flush=True)

    print(f"\n{clients} clients x {requests} requests to /api/answer on 127.0.0.1, {decoding['strategy']}, "
          f"max_new_tokens {decoding['max_new_tokens']}, model {model_name}; the pass with more requests/s "
          f"of {repeats}\n")
    print("| server | requests | errors | p50 ms | p95 ms | requests/s | server p50 ms | server p95 ms "
          "| questions per decoder call |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = {}
    for batch in (max_batch, 1):
        r = best[batch] = max(runs[batch], key=lambda run: len(run["latencies"]) / run["wall"])
        ok, errors = r["latencies"], r["errors"]
        name = f"batching (--max-batch {batch})" if batch > 1 else "one at a time (--max-batch 1)"
        print(f"| {name} | {len(ok) + sum(errors.values()):,} | {shown_errors(errors)} | {percentile(ok, 50):,.1f} "
              f"| {percentile(ok, 95):,.1f} | {len(ok) / r['wall']:,.1f} | {percentile(r['inside'], 50):,.1f} "
              f"| {percentile(r['inside'], 95):,.1f} | {len(ok) / max(r['calls'], 1):.1f} |")
    rate = {b: len(r["latencies"]) / r["wall"] for b, r in best.items()}
    print(f"\nbatching / one at a time: x{rate[max_batch] / rate[1]:.2f} requests/s, "
          f"p50 x{percentile(best[1]['latencies'], 50) / percentile(best[max_batch]['latencies'], 50):.2f} lower\n",
          flush=True)


def chat_sections(folder: Path, model_name: str, wanted: set, levels: list[int], max_batch: int, decoding: dict,
                  seconds: float, per_client: int, threads: int, timeout: float) -> None:
    """streaming and throughput: one server, per level a non-streamed pass then (streaming) a streamed one."""
    plain: dict[int, dict] = {}
    streamed: dict[int, dict] = {}
    port = free_port()
    proc = start_server(folder, max_batch, port, threads)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(chat_warm_up(base, decoding, timeout))
        for clients in levels:
            plain[clients] = p = asyncio.run(chat_pass(base, clients, False, decoding, seconds, per_client, timeout))
            line = f"{clients} clients: {len(p['ok']) / p['wall']:.1f} answers/s"
            if "streaming" in wanted:
                streamed[clients] = s = asyncio.run(chat_pass(base, clients, True, decoding, seconds, per_client,
                                                              timeout))
                ttft = [r["ttft"] for r in s["ok"] if r["ttft"] is not None]
                line += f", streamed TTFT p50 {percentile(ttft, 50):.1f} ms"
            print(line, flush=True)
    finally:
        stop_server(proc)

    each = f"{per_client} requests per client" if per_client else f"back to back for {seconds:g} s"
    where = (f"{CHAT} on 127.0.0.1 (--max-batch {max_batch}), {decoding['strategy']}, max_tokens "
             f"{decoding['max_new_tokens']}, model {model_name}; every client {each}")
    if "streaming" in wanted:
        print(f"\nTime to first token (streamed) and whole-answer latency (the same requests, not streamed), {where}\n")
        print("| clients | streamed | errors | TTFT p50 ms | TTFT p95 ms | stream end p50 ms | not streamed "
              "| errors | whole p50 ms | whole p95 ms | TTFT / whole p50 | TTFT / whole p95 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for clients in levels:
            s, p = streamed[clients], plain[clients]
            ttft = [r["ttft"] for r in s["ok"] if r["ttft"] is not None]
            whole = [r["ms"] for r in p["ok"]]
            empty = len(s["ok"]) - len(ttft)
            errors = dict(s["errors"]) | ({"no content": empty} if empty else {})
            print(f"| {clients} | {len(s['ok']):,} | {shown_errors(errors)} | {percentile(ttft, 50):,.1f} "
                  f"| {percentile(ttft, 95):,.1f} | {percentile([r['ms'] for r in s['ok']], 50):,.1f} "
                  f"| {len(p['ok']):,} | {shown_errors(dict(p['errors']))} | {percentile(whole, 50):,.1f} "
                  f"| {percentile(whole, 95):,.1f} | {percentile(ttft, 50) / max(percentile(whole, 50), 1e-9):.2f} "
                  f"| {percentile(ttft, 95) / max(percentile(whole, 95), 1e-9):.2f} |")
    if "throughput" in wanted:
        print(f"\nThroughput of non-streamed answers, {where}\n")
        print("| clients | answers | errors | seconds | answers/s | tokens/s | tokens per answer | p50 ms | p95 ms "
              "| questions per decoder call |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for clients in levels:
            p = plain[clients]
            ms, tokens = [r["ms"] for r in p["ok"]], sum(r["tokens"] for r in p["ok"])
            print(f"| {clients} | {len(p['ok']):,} | {shown_errors(dict(p['errors']))} | {p['wall']:.1f} "
                  f"| {len(p['ok']) / p['wall']:,.1f} | {tokens / p['wall']:,.1f} "
                  f"| {tokens / max(len(p['ok']), 1):.1f} | {percentile(ms, 50):,.1f} | {percentile(ms, 95):,.1f} "
                  f"| {len(p['ok']) / max(p['calls'], 1):.1f} |")
    print(flush=True)


def overload_section(folder: Path, model_name: str, clients: int, per_client: int, queue: int, max_batch: int,
                     decoding: dict, threads: int, timeout: float) -> bool:
    """The overload table; False when a request got something other than a 200 or a 429 with
    Retry-After, or the run hung."""
    port = free_port()
    proc = start_server(folder, max_batch, port, threads, max_queue=queue)
    try:
        asyncio.run(chat_warm_up(f"http://127.0.0.1:{port}", decoding, timeout))
        run = asyncio.run(overload(f"http://127.0.0.1:{port}", clients, per_client, decoding, timeout))
    finally:
        stop_server(proc)
    results = run["results"]
    outcomes = Counter(r["outcome"] for r in results)
    refused = [r for r in results if r["outcome"] == "429"]
    told = [int(r["retry_after"]) for r in refused if (r["retry_after"] or "").isdigit() and int(r["retry_after"]) >= 1]
    other = {k: v for k, v in outcomes.items() if k not in ("200", "429")}
    if len(told) < len(refused):
        other["429 without a Retry-After"] = len(refused) - len(told)
    if run["hung"]:
        other[f"hung past {timeout + 10:g} s"] = clients * per_client - len(results)
    ok_ms = [r["ms"] for r in results if r["outcome"] == "200"]
    streamed_ok = sum(1 for r in results if r["outcome"] == "200" and r["stream"])
    told_range = "-" if not told else str(min(told)) if min(told) == max(told) else f"{min(told)}-{max(told)}"

    print(f"\nOverload: {clients} clients at once x {per_client} requests back to back (odd clients streamed, a 429 "
          f"not waited out) to {CHAT}, server --max-queue {queue} --max-batch {max_batch}, {decoding['strategy']}, "
          f"max_tokens {decoding['max_new_tokens']}, model {model_name}\n")
    print("| requests | 200 | of them streamed | 429 | 429 with Retry-After | Retry-After s | anything else "
          "| 200 p50 ms | 429 p50 ms | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {clients * per_client:,} | {outcomes['200']:,} | {streamed_ok:,} | {outcomes['429']:,} | {len(told):,} "
          f"| {told_range} | {shown_errors(other)} | {percentile(ok_ms, 50):,.1f} "
          f"| {percentile([r['ms'] for r in refused], 50):,.1f} | {run['wall']:.1f} |")
    good = not other
    if not outcomes["429"]:
        print(f"\noverload: no request got a 429 (the queue of {queue} never filled): raise --overload-clients")
    print(f"\noverload: {'OK' if not other else 'FAILED'}: {outcomes['200']} answered, {len(told)} refused "
          f"with Retry-After, anything else: {shown_errors(other)}", flush=True)
    return good


@app.command()
def main(
    model: Optional[Path] = typer.Option(None, "--model", help="model folder (default: the tests' tiny GRU)"),
    clients: int = typer.Option(50, help="batching: concurrent clients"),
    requests: int = typer.Option(20, help="batching: requests per client, one after another"),
    max_batch: int = typer.Option(16, "--max-batch", help="the batching server's cap (compared with 1; the "
                                                         "other sections' servers use it too)"),
    strategy: str = typer.Option("greedy", help="greedy | beam | nucleus"),
    max_new_tokens: int = typer.Option(24, help="longest answer, in tokens"),
    repeats: int = typer.Option(2, help="batching: passes per server, interleaved; the one with more requests/s "
                                        "counts"),
    threads: int = typer.Option(0, help="the server's --threads (0: one fewer than the cores)"),
    timeout: float = typer.Option(120.0, help="seconds one request may take before it counts as an error"),
    sections: str = typer.Option(",".join(SECTIONS), help="what to run, comma-separated: " + ", ".join(SECTIONS)),
    levels: str = typer.Option("1,8,32", help="streaming, throughput: concurrent clients of each pass, "
                                              "comma-separated"),
    pass_seconds: float = typer.Option(5.0, help="streaming, throughput: each client sends back to back this long"),
    pass_requests: int = typer.Option(0, help="streaming, throughput: exactly this many requests per client "
                                              "instead (0: --pass-seconds decides)"),
    overload_clients: int = typer.Option(64, help="overload: clients at once"),
    overload_requests: int = typer.Option(2, help="overload: requests per client, back to back"),
    overload_queue: int = typer.Option(4, help="overload: the server's --max-queue"),
) -> None:
    wanted = {s.strip() for s in sections.split(",") if s.strip()}
    if not wanted or wanted - set(SECTIONS):
        raise typer.BadParameter(f"give some of {', '.join(SECTIONS)}, got {sections!r}", param_hint="--sections")
    try:
        counts = [int(n) for n in levels.split(",") if n.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"give concurrent client counts such as 1,8,32, got {levels!r}", param_hint="--levels")
    if pass_requests < 0 or (not pass_requests and pass_seconds <= 0):
        raise typer.BadParameter("--pass-seconds must be > 0 (or --pass-requests >= 1)", param_hint="--pass-seconds")
    decoding = {"strategy": strategy, "max_new_tokens": max_new_tokens}
    model_name = "tiny GRU (tests)" if model is None else str(model)
    good = True
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = model or tiny_model(Path(tmp))
        if "batching" in wanted:
            batching_section(folder, model_name, clients, requests, max_batch, decoding, repeats, threads, timeout)
        if wanted & {"streaming", "throughput"}:
            chat_sections(folder, model_name, wanted, counts, max_batch, decoding, pass_seconds, pass_requests,
                          threads, timeout)
        if "overload" in wanted:
            good = overload_section(folder, model_name, overload_clients, overload_requests, overload_queue,
                                    max_batch, decoding, threads, timeout)
    print(f"\nserve_load: {time.perf_counter() - began:.0f} s in all")
    if not good:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
