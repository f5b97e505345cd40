"""The web app on a tiny model: the JSON API, its caps and errors, batching, and a free event loop."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from chitchat.cli import app as cli_app
from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import MAX_QUESTION_CHARS, ChatService
from chitchat.serve import limits
from chitchat.serve.app import DecodingOptions, create_app, running_server
from test_inference import PAIRS, service, tiny_model  # noqa: F401  (module-scoped fixtures)

KEYS = {"answers", "category", "question", "truncated", "history_turns", "latency_ms", "decoding"}


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def ask(client, question: str, **body) -> dict:
    response = client.post("/api/answer", json={"question": question, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_answer_has_the_documented_keys(client):
    out = ask(client, "Как дела?", category="юмор")
    assert set(out) == KEYS
    assert out["answers"] == [{"text": "Нормально, а у тебя?", "score": pytest.approx(out["answers"][0]["score"])}]
    assert out["category"] == "Юмор" and out["question"] == "Как дела?" and out["truncated"] is False
    assert out["latency_ms"] >= 0 and out["decoding"] == {f.name: getattr(DecodingConfig(), f.name)
                                                         for f in fields(DecodingConfig)}


def test_same_answer_as_the_service(client, service):
    for category, pairs in PAIRS.items():
        question = pairs[0][0]
        expected = service.reply(question, category)
        out = ask(client, question, category=category)
        assert [a["text"] for a in out["answers"]] == [a.text for a in expected.answers]


def test_beam_n_best_sorted_and_history_accepted(client):
    out = ask(client, "Как сварить борщ?", history=["Привет!", "Привет! Всё хорошо."],
              decoding={"strategy": "beam", "beam_size": 5, "n": 3})
    scores = [a["score"] for a in out["answers"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert out["decoding"]["beam_size"] == 5 and out["decoding"]["n"] == 3


def test_nucleus_same_seed_same_answers_even_under_load(client):
    body = {"strategy": "nucleus", "top_p": 0.95, "temperature": 1.5, "n": 2, "seed": 11}
    alone = ask(client, "Расскажи анекдот!", decoding=body)["answers"]
    with ThreadPoolExecutor(8) as pool:  # sampling never shares a batch, so neighbours cannot change it
        crowd = list(pool.map(lambda _: ask(client, "Расскажи анекдот!", decoding=body)["answers"], range(8)))
    assert all(answers == alone for answers in crowd)


def test_truncated_question_is_flagged(client):
    assert ask(client, "Как завести машину в мороз, если аккумулятор сел и стартер не крутит?")["truncated"] is True


def test_categories_limits_health_docs_and_page(client):
    assert client.get("/api/categories").json() == {"categories": sorted(PAIRS), "conditioned": True,
                                                    "condition_field": "category"}
    caps = client.get("/api/limits").json()
    assert caps["bounds"]["n"] == [1, 5] and caps["bounds"]["beam_size"] == [1, 10]
    assert caps["bounds"]["max_new_tokens"] == [1, 128] and caps["max_question_chars"] == MAX_QUESTION_CHARS
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == {"type": "gru", "conditioned": True, "categories": 3,
                                                            "max_history": 0, "condition_field": "category"}
    assert "/api/answer" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'name="viewport"' in page.text and 'id="category"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_request_options_mirror_decoding_config():
    """Every DecodingConfig field can be set over HTTP, and nothing else can."""
    assert list(DecodingOptions.model_fields) == [f.name for f in fields(DecodingConfig)]
    assert DecodingOptions().config() == DecodingConfig()


@pytest.mark.parametrize("body, message", [
    ({"question": "а" * (MAX_QUESTION_CHARS + 1)}, "question: String should have at most 1000 characters"),
    ({"question": "x", "decoding": {"max_new_tokens": 129}}, "decoding.max_new_tokens: Input should be less than or equal to 128"),
    ({"question": "x", "decoding": {"strategy": "nucleus", "n": 6}}, "decoding.n: Input should be less than or equal to 5"),
    ({"question": "x", "decoding": {"strategy": "beam", "beam_size": 11}}, "decoding.beam_size: Input should be less than or equal to 10"),
    ({"question": "x", "decoding": {"top_p": 0}}, "decoding.top_p: Input should be greater than 0"),
    ({"question": "x", "decoding": {"top_p": 1.5}}, "decoding.top_p"),
    ({"question": "x", "decoding": {"temperature": 0}}, "decoding.temperature"),
    ({"question": "x", "decoding": {"length_penalty": 1e300}}, "decoding.length_penalty"),
    ({"question": "x", "decoding": {"seed": 2**70}}, "decoding.seed"),
    ({"question": "x", "decoding": {"strategy": "sampling"}}, "decoding.strategy: Input should be 'greedy', 'beam' or 'nucleus'"),
    ({"question": "x", "decoding": {"topp": 0.9}}, "decoding.topp: Extra inputs are not permitted"),
    ({"question": "x", "history": ["turn"] * (limits.MAX_HISTORY + 1)}, "history: List should have at most 20 items"),
    ({"question": 42}, "question: Input should be a valid string"),
    ({"category": "Юмор"}, "question: Field required"),
    ({"question": "   "}, "question is empty"),
    ({"question": "x", "category": "Спорт"}, "unknown category 'Спорт'; known: Авто, Мото; Еда, Кулинария; Юмор"),
    ({"question": "x", "decoding": {"strategy": "greedy", "n": 2}}, "decoding.n must be 1 for greedy, got 2"),
    ({"question": "x", "decoding": {"strategy": "beam", "beam_size": 2, "n": 3}}, "decoding.n must be <= beam_size (2)"),
])
def test_bad_request_is_422_with_one_line(client, body, message):
    response = client.post("/api/answer", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail


@pytest.mark.parametrize("content, message", [
    (b"{bad json", "the body is not valid JSON"),
    (b"", "the body must be a JSON object"),
    (b"[1, 2]", "the body must be a JSON object"),
    ('"Как дела?"'.encode(), "the body must be a JSON object"),
    (b"\xff\xfe\x00", "the body is not valid JSON"),
    (b'{"question": "x", "decoding": {"top_p": NaN}}', "decoding.top_p"),
    (b'{"question": "x", "decoding": [1]}', "decoding: Input should be a valid dictionary"),
])
def test_malformed_body_is_422_never_500(client, content, message):
    response = client.post("/api/answer", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_huge_body_is_refused_before_parsing(client):
    response = client.post("/api/answer", content=b'{"question": "' + b"a" * 100_000 + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "at most" in response.json()["detail"]


def send_chunked_until_answered(url: str, path: str) -> tuple[bytes, int]:
    """POST an endless chunked body to `path` on a raw socket, as a hostile client would, until the
    server answers; (the reply's first bytes, bytes of body sent)."""
    import select
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % path.encode())
        chunk, sent = b"a" * 8192, 0
        try:
            while sent < 50 * 2**20 and not select.select([sock], [], [], 0.001)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the server hung up after its answer
            pass
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply, sent


def _length(reply: bytes) -> int:
    """Content-Length of an HTTP reply's head."""
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_chunked_body_over_the_cap_is_refused_after_reading_little_of_it(service):
    """No Content-Length to trust: the server stops at the first chunk past the cap and answers 413
    while the client is still sending."""
    from chitchat.serve.app import MAX_BODY_BYTES

    with running_server(create_app(service)) as url:
        reply, sent = send_chunked_until_answered(url, "/api/answer")
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"at most" in reply and sent < 4 * 2**20, sent  # refused long before 50 MB went out
        small = httpx.post(f"{url}/api/answer", content=iter([b'{"question": ', b'"\xd0\x9a\xd0\xb0\xd0\xba '
                                                               b'\xd0\xb4\xd0\xb5\xd0\xbb\xd0\xb0?"}']),
                           headers={"content-type": "application/json"}, timeout=30)
        assert small.status_code == 200 and small.json()["question"] == "Как дела?"  # within the cap: answered
        assert MAX_BODY_BYTES < 4 * 2**20


class CountingService:
    """The real service, counting decoder calls and how many questions each one got."""

    def __init__(self, inner: ChatService, gate: threading.Event | None = None):
        self.inner, self.gate, self.batches = inner, gate, []
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def answer_batch(self, questions, *args, **kwargs):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.batches.append(len(questions))
        return self.inner.answer_batch(questions, *args, **kwargs)

    def reply(self, question, category=None, decoding=None, history=None):
        return self.answer_batch([question], [category], decoding, [history])[0]


def test_waiting_requests_share_a_decoder_call_and_a_bad_one_fails_alone(service):
    gate = threading.Event()
    counting = CountingService(service, gate)
    questions = [q for pairs in PAIRS.values() for q, _ in pairs][:8] + ["   "]
    with running_server(create_app(counting, max_batch=16)) as url, httpx.Client(base_url=url, timeout=60) as http:
        with ThreadPoolExecutor(len(questions) + 1) as pool:
            first = pool.submit(http.post, "/api/answer", json={"question": "Как дела?"})
            assert counting.entered.wait(30)  # the first decode holds the model; the rest queue up
            rest = [pool.submit(http.post, "/api/answer", json={"question": q}) for q in questions]
            deadline = time.monotonic() + 30
            while http.get("/health").json()["waiting"] < len(questions) and time.monotonic() < deadline:
                time.sleep(0.02)
            gate.set()
            responses = [first.result()] + [f.result() for f in rest]
    assert [r.status_code for r in responses] == [200] * (len(questions)) + [422]
    assert responses[-1].json()["detail"] == "question is empty"
    for question, response in zip(questions, responses[1:-1]):
        assert response.json()["answers"][0]["text"] == service.reply(question).answers[0].text
    # 1 alone, then the 9 waiting in one call, which fails on the empty one, then each alone
    assert counting.batches == [1, len(questions)] + [1] * len(questions)


def test_one_call_for_many_waiting_questions(service):
    gate = threading.Event()
    counting = CountingService(service, gate)
    with running_server(create_app(counting, max_batch=4)) as url, httpx.Client(base_url=url, timeout=60) as http:
        with ThreadPoolExecutor(11) as pool:
            first = pool.submit(http.post, "/api/answer", json={"question": "Как дела?"})
            assert counting.entered.wait(30)
            rest = [pool.submit(http.post, "/api/answer", json={"question": "Сколько варить яйцо?"}) for _ in range(10)]
            deadline = time.monotonic() + 30
            while http.get("/health").json()["waiting"] < 10 and time.monotonic() < deadline:
                time.sleep(0.02)
            gate.set()
            assert all(f.result().status_code == 200 for f in [first, *rest])
    assert counting.batches == [1, 4, 4, 2]  # max_batch caps a call


def test_health_answers_while_a_slow_answer_is_in_flight(service):
    gate = threading.Event()
    slow = CountingService(service, gate)
    with running_server(create_app(slow)) as url, httpx.Client(base_url=url, timeout=60) as http:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http.post, "/api/answer", json={"question": "Как дела?", "category": "Юмор"})
            assert slow.entered.wait(30)
            start = time.perf_counter()
            health = http.get("/health", timeout=5)
            categories = http.get("/api/categories", timeout=5)
            took = time.perf_counter() - start
            assert health.status_code == 200 and health.json()["busy"] is True and categories.status_code == 200
            assert not pending.done()  # the answer is still being decoded
            gate.set()
            assert pending.result().json()["answers"][0]["text"] == "Нормально, а у тебя?"
    assert took < 2.0


def test_serve_command_loads_once_and_runs_uvicorn(tiny_model, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    threads = torch.get_num_threads()  # set it to what it is: the command sets it for the whole process
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model), "--port", "8123", "--max-batch", "4",
                                          "--threads", str(threads)])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["app"].state.batcher.max_batch == 4 and torch.get_num_threads() == threads
    with TestClient(seen["app"]) as c:
        assert c.post("/api/answer", json={"question": "Как дела?", "category": "юмор"}).json()["answers"][0]["text"] \
            == "Нормально, а у тебя?"


def test_serve_without_a_model_is_one_line(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "run `dvc repro` first" in result.stderr and result.stderr.count("\n") == 1


def test_bad_max_batch_is_one_line(tiny_model):
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model), "--max-batch", "0",
                                          "--threads", str(torch.get_num_threads())])
    assert result.exit_code == 1 and result.stderr.strip() == "chitchat: error: max_batch must be >= 1, got 0"


def test_json_is_utf8_not_escaped(client):
    raw = client.post("/api/answer", json={"question": "Как дела?"}).content.decode("utf-8")
    assert "Как дела?" in raw
    json.loads(raw)


def test_answering_from_the_cli_imports_no_server_library(tiny_model):
    """`chitchat ask` stays a cold start of torch and the tokenizer: serve and bot import theirs lazily."""
    code = ("import sys; from typer.testing import CliRunner; from chitchat.cli import app; "
            f"r = CliRunner().invoke(app, ['ask', 'Как дела?', '--model', {str(tiny_model)!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'aiogram', 'aiohttp') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
