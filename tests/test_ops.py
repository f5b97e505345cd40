"""serve/ops.py: the API key gate and the Prometheus metrics, on a tiny FastAPI app of their own."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.background import BackgroundTask

from chitchat.serve import ops
from chitchat.serve.ops import KeyGate, Metrics, MetricsMiddleware, add_metrics_route, resolve_key

KEY = "s3cret-key-123"
SLEEP = 0.2


def build(tmp_path, key: str | None = None, metrics: Metrics | None = None) -> tuple[FastAPI, Metrics]:
    """Routes like the real app's: public /health, protected /v1/ and /api/, a stream, a crash, /static."""
    metrics = metrics or Metrics()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": []}

    @app.post("/api/answer")
    async def answer(request: Request) -> dict:
        return {"got": len(await request.body())}

    @app.get("/api/items/{n}")
    async def item(n: int) -> dict:
        return {"n": n}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks():
            yield "data: a\n\n"
            await asyncio.sleep(SLEEP)
            yield "data: b\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/background")
    async def background() -> StreamingResponse:
        return StreamingResponse(iter(["x"]), background=BackgroundTask(time.sleep, 1.0))

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("kaputt")

    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    app.mount("/static", StaticFiles(directory=tmp_path), name="static")
    add_metrics_route(app, metrics)
    app.add_middleware(KeyGate, key=key)  # inner: the middleware outside it counts its 401s too
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app, metrics


def samples(metrics: Metrics) -> list:
    text = metrics.render()[0].decode("utf-8")
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(metrics: Metrics, name: str, **labels) -> float:
    """The sample `name` with exactly these labels; 0 where there is none yet."""
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else 0.0


# ---------------------------------------------------------------- the key gate


@pytest.fixture
def gated(tmp_path) -> TestClient:
    return TestClient(build(tmp_path, key=KEY)[0])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer"}, {"Authorization": ""},
                                     {"Authorization": f"Bearer {KEY}x"}, {"X-API-Key": KEY}])
def test_a_request_without_the_right_key_gets_401(gated, headers):
    for path in ("/v1/models", "/api/items/1"):
        r = gated.get(path, headers=headers)
        assert r.status_code == 401, (path, headers)
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text


def test_the_right_key_passes(gated):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert gated.get("/v1/models", headers=auth).json() == {"object": "list", "data": []}
    assert gated.get("/api/items/7", headers=auth).json() == {"n": 7}
    assert gated.post("/api/answer", content=b"12345", headers=auth).json() == {"got": 5}
    assert gated.get("/api/items/7", headers={"Authorization": f"bearer  {KEY} "}).status_code == 200


def test_v1_answers_in_openai_error_shape_and_api_in_detail_shape(gated):
    r = gated.get("/v1/models")
    assert r.json() == {"error": {"message": "missing API key: send Authorization: Bearer <key>",
                                  "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    wrong = gated.get("/v1/models", headers={"Authorization": "Bearer nope-guess"}).json()["error"]
    assert wrong["message"] == "wrong API key" and "nope-guess" not in wrong["message"]
    assert gated.get("/api/items/1").json() == {"detail": "missing API key: send Authorization: Bearer <key>"}
    basic = gated.get("/api/items/1", headers={"Authorization": "Basic dXNlcjpwYXNz"}).json()
    assert set(basic) == {"detail"} and "Bearer" in basic["detail"] and "\n" not in basic["detail"]
    assert gated.get("/api/items/1", headers={"Authorization": "Bearer guess-me"}).json() == {"detail": "wrong API key"}


def test_health_page_metrics_and_static_stay_public(gated):
    assert gated.get("/health").json() == {"status": "ok"}
    assert gated.get("/metrics").status_code == 200
    assert gated.get("/static/a.txt").text == "hello"
    assert gated.get("/").status_code == 404  # no page in this app, but not a 401


@pytest.mark.parametrize("key", [None, ""])
def test_no_key_leaves_everything_open(tmp_path, key):
    client = TestClient(build(tmp_path, key=key)[0])
    assert client.get("/v1/models").status_code == 200
    assert client.get("/api/items/3").json() == {"n": 3}
    assert client.get("/api/items/3", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_the_gate_refuses_without_reading_the_body():
    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        raise AssertionError("the gate read the body")

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/answer", "root_path": "", "query_string": b"",
             "headers": [(b"content-length", b"5")]}
    asyncio.run(KeyGate(app, KEY)(scope, receive, send))
    assert sent[0]["status"] == 401 and (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert b"missing API key" in sent[1]["body"]


def test_the_key_is_compared_with_hmac_compare_digest(gated, monkeypatch):
    calls = []
    real = ops.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ops.hmac, "compare_digest", spy)
    assert gated.get("/api/items/1", headers={"Authorization": "Bearer other"}).status_code == 401
    assert gated.get("/api/items/1", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert calls == [(b"other", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_lifespan_and_websocket_pass_the_gate():
    started = []

    @asynccontextmanager
    async def lifespan(app):
        started.append(True)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/v1/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        await socket.send_text("hi")
        await socket.close()

    app.add_middleware(KeyGate, key=KEY)
    with TestClient(app) as client:
        assert started == [True]
        with client.websocket_connect("/v1/ws") as socket:
            assert socket.receive_text() == "hi"


def test_custom_protected_prefixes(tmp_path):
    app = FastAPI()

    @app.get("/admin/x")
    async def admin() -> dict:
        return {}

    @app.get("/api/x")
    async def api() -> dict:
        return {}

    app.add_middleware(KeyGate, key=KEY, protected=("/admin/",))
    client = TestClient(app)
    assert client.get("/admin/x").status_code == 401
    assert client.get("/api/x").status_code == 200


def test_resolve_key(monkeypatch):
    monkeypatch.delenv("CHITCHAT_API_KEY", raising=False)
    assert resolve_key(None) is None
    assert resolve_key("  ") is None
    assert resolve_key(" opt ") == "opt"
    monkeypatch.setenv("CHITCHAT_API_KEY", "  from-env\n")
    assert resolve_key(None) == "from-env"
    assert resolve_key("opt") == "opt"  # the option wins
    monkeypatch.setenv("CHITCHAT_API_KEY", "   ")
    assert resolve_key(None) is None


# ---------------------------------------------------------------- metrics


def test_requests_are_counted_by_route_template_and_status(tmp_path):
    app, metrics = build(tmp_path, key=KEY)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {KEY}"}
    for n in range(5):
        assert client.get(f"/api/items/{n}", headers=auth).status_code == 200
    for _ in range(2):
        assert client.get("/api/items/1").status_code == 401  # refused by the gate, before routing
    assert client.get("/api/items/abc", headers=auth).status_code == 422
    assert client.post("/health").status_code == 405
    name = "chitchat_requests_total"
    assert value(metrics, name, route="/api/items/{n}", status="200") == 5
    assert value(metrics, name, route="/api/items/{n}", status="401") == 2
    assert value(metrics, name, route="/api/items/{n}", status="422") == 1
    assert value(metrics, name, route="/health", status="405") == 1
    assert value(metrics, "chitchat_request_seconds_count", route="/api/items/{n}") == 8
    assert value(metrics, "chitchat_requests_in_flight") == 0


def test_unmatched_paths_and_static_files_do_not_grow_the_labels(tmp_path):
    app, metrics = build(tmp_path)
    client = TestClient(app)
    for path in ("/nope", "/wp-admin/login.php", "/v1/unknown", "/a/b/c"):
        assert client.get(path).status_code == 404
    assert client.get("/static/a.txt").status_code == 200
    assert client.get("/static/missing.txt").status_code == 404
    name = "chitchat_requests_total"
    assert value(metrics, name, route="other", status="404") == 4
    assert value(metrics, name, route="/static", status="200") == 1
    assert value(metrics, name, route="/static", status="404") == 1
    routes = {s.labels["route"] for s in samples(metrics) if s.name == name}
    assert routes == {"other", "/static"}


def test_a_streamed_response_counts_its_whole_duration(tmp_path):
    app, metrics = build(tmp_path)
    client = TestClient(app)
    r = client.get("/stream")
    assert r.text == "data: a\n\ndata: b\n\n"
    assert value(metrics, "chitchat_request_seconds_count", route="/stream") == 1
    assert value(metrics, "chitchat_request_seconds_sum", route="/stream") >= SLEEP
    assert value(metrics, "chitchat_requests_total", route="/stream", status="200") == 1
    assert value(metrics, "chitchat_requests_in_flight") == 0


def test_the_time_stops_at_the_last_body_byte_not_after_background_tasks(tmp_path):
    app, metrics = build(tmp_path)
    assert TestClient(app).get("/background").text == "x"
    assert value(metrics, "chitchat_request_seconds_count", route="/background") == 1
    assert value(metrics, "chitchat_request_seconds_sum", route="/background") < 0.9  # the task sleeps 1 s


def test_an_exception_counts_as_500_and_in_flight_returns_to_zero(tmp_path):
    app, metrics = build(tmp_path)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/boom").status_code == 500
    assert value(metrics, "chitchat_requests_total", route="/boom", status="500") == 1
    assert value(metrics, "chitchat_requests_in_flight") == 0
    with pytest.raises(RuntimeError, match="kaputt"):  # re-raised, not swallowed
        TestClient(app).get("/boom")
    assert value(metrics, "chitchat_requests_total", route="/boom", status="500") == 2
    assert value(metrics, "chitchat_requests_in_flight") == 0


def test_a_client_leaving_mid_stream_still_brings_in_flight_down():
    metrics = Metrics()
    started: asyncio.Event | None = None

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        started.set()
        await asyncio.sleep(30)

    async def quiet(scope, receive, send):
        started.set()
        await asyncio.sleep(30)

    async def send(message):
        pass

    async def receive():
        return {"type": "http.disconnect"}

    async def leave(inner) -> float:
        nonlocal started
        started = asyncio.Event()  # one per event loop
        task = asyncio.create_task(MetricsMiddleware(inner, metrics)({"type": "http", "path": "/x"}, receive, send))
        await started.wait()
        in_flight = value(metrics, "chitchat_requests_in_flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return in_flight

    assert asyncio.run(leave(app)) == 1
    assert asyncio.run(leave(quiet)) == 1
    assert value(metrics, "chitchat_requests_in_flight") == 0
    assert value(metrics, "chitchat_requests_total", route="other", status="200") == 1
    assert value(metrics, "chitchat_requests_total", route="other", status="499") == 1


def test_queue_depth_reads_the_callable_at_every_scrape():
    waiting = []
    metrics = Metrics(queue_depth=lambda: len(waiting))
    assert value(metrics, "chitchat_queue_depth") == 0
    waiting += ["a", "b", "c"]
    assert value(metrics, "chitchat_queue_depth") == 3
    assert value(Metrics(), "chitchat_queue_depth") == 0


def test_the_app_side_counters():
    metrics = Metrics()
    metrics.observe_first_token("/v1/chat/completions", 0.03)
    metrics.observe_first_token("/v1/chat/completions", 0.07)
    metrics.add_tokens(12)
    metrics.add_tokens(30)
    metrics.cancelled()
    metrics.rejected("queue_full")
    metrics.rejected("queue_full")
    metrics.rejected("timeout")
    route = "/v1/chat/completions"
    assert value(metrics, "chitchat_time_to_first_token_seconds_count", route=route) == 2
    assert value(metrics, "chitchat_time_to_first_token_seconds_sum", route=route) == pytest.approx(0.1)
    assert value(metrics, "chitchat_time_to_first_token_seconds_bucket", route=route, le="0.05") == 1
    assert value(metrics, "chitchat_generated_tokens_total") == 42
    assert value(metrics, "chitchat_generations_cancelled_total") == 1
    assert value(metrics, "chitchat_requests_rejected_total", reason="queue_full") == 2
    assert value(metrics, "chitchat_requests_rejected_total", reason="timeout") == 1


def test_two_metrics_do_not_share_counts(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, m1 = build(tmp_path / "one")
    two, m2 = build(tmp_path / "two")
    for _ in range(3):
        TestClient(one).get("/health")
    TestClient(two).get("/health")
    m1.add_tokens(5)
    assert value(m1, "chitchat_requests_total", route="/health", status="200") == 3
    assert value(m2, "chitchat_requests_total", route="/health", status="200") == 1
    assert value(m2, "chitchat_generated_tokens_total") == 0


def test_the_metrics_route_serves_the_text_format(tmp_path):
    app, metrics = build(tmp_path)
    client = TestClient(app)
    client.get("/health")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"chitchat_requests", "chitchat_request_seconds", "chitchat_time_to_first_token_seconds",
            "chitchat_generated_tokens", "chitchat_requests_in_flight", "chitchat_queue_depth",
            "chitchat_generations_cancelled", "chitchat_requests_rejected"} <= families
    assert 'chitchat_requests_total{route="/health",status="200"} 1.0' in r.text
    assert "/metrics" not in app.openapi()["paths"]
