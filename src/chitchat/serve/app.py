"""The web front end: a chat page and a JSON API over one ChatService (FastAPI, served by uvicorn).

`create_app(service)` builds the app around a loaded service (`chitchat serve` loads it once at
start-up); every answer goes through a `Batcher`, so decoding runs in a worker thread and the
event loop stays free for `/health`, the page and the other requests. Every bad request to /api/*
is a 422 whose `detail` is one readable line; `errors` lists each problem when the body failed
validation. The OpenAI-compatible /v1/* routes (chitchat.serve.openai_api) answer errors in
OpenAI's shape instead. Around both: an optional API key, Prometheus metrics at /metrics, a queue
that refuses (429) rather than grows, and a body cap (chitchat.serve.ops).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import ChatService, RequestError
from chitchat.core.errors import InputError
from chitchat.serve import limits
from chitchat.serve.batcher import Batcher, QueueFull
from chitchat.serve.openai_api import TimedOut, add_openai_routes, error_response, openai_error
from chitchat.serve.ops import KeyGate, Metrics, MetricsMiddleware, add_metrics_route

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024  # a full request (question, 20 turns of history, options) is far smaller
D = DecodingConfig()
B = limits.BOUNDS
log = logging.getLogger(__name__)


def _bounded(name: str, **extra):
    """A Field with the default from DecodingConfig and the caps from limits.BOUNDS."""
    low, high = B[name]
    return Field(getattr(D, name), ge=low, le=high, **extra)


class DecodingOptions(BaseModel):
    """Decoding options; each one left out keeps DecodingConfig's default (docs/decoding.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    strategy: Literal["greedy", "beam", "nucleus"] = D.strategy
    max_new_tokens: int = _bounded("max_new_tokens")
    min_new_tokens: int = _bounded("min_new_tokens")
    beam_size: int = _bounded("beam_size")
    length_penalty: float = _bounded("length_penalty")
    no_repeat_ngram_size: int = _bounded("no_repeat_ngram_size")
    early_stopping: bool = D.early_stopping
    n: int = _bounded("n", description="answers: 1 for greedy, at most beam_size for beam")
    temperature: float = _bounded("temperature")
    top_k: int = _bounded("top_k")
    top_p: float = Field(D.top_p, gt=0, le=1)
    repetition_penalty: float = _bounded("repetition_penalty")
    seed: int = _bounded("seed")
    rerank_k: int = _bounded("rerank_k", description="0: generate; k: also score the k best retrieved train answers")
    rerank_own: bool = Field(D.rerank_own, description="rerank: the model's own answers compete too")
    rerank_mmi: float = Field(D.rerank_mmi, ge=0, le=1, description="rerank: minus this x the answer's score without the question")

    def config(self) -> DecodingConfig:
        return DecodingConfig(**self.model_dump())


Turn = Annotated[str, StringConstraints(max_length=limits.MAX_TURN)]


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=limits.MAX_QUESTION, examples=["Как дела?"])
    category: Optional[str] = Field(None, max_length=limits.MAX_CATEGORY,
                                    description="any case; null: none (a character's name for a persona model)")
    history: list[Turn] = Field(default_factory=list, max_length=limits.MAX_HISTORY,
                                description="earlier turns of this conversation, oldest first (question, answer, "
                                            "...); the model reads its last max_history of them")
    decoding: DecodingOptions = Field(default_factory=DecodingOptions)


class AnswerOut(BaseModel):
    text: str
    score: Optional[float]  # null where the decoder's score is not a finite number


class AnswerResponse(BaseModel):
    answers: list[AnswerOut]  # best first
    category: Optional[str]  # the model's own spelling
    question: str  # normalized, as the model saw it
    truncated: bool  # cut to the model's max_src_len tokens
    history_turns: int  # earlier turns the model read (at most its max_history)
    latency_ms: float  # from arrival to answer, queueing included
    decoding: DecodingOptions  # every option, defaults filled in


def _one_line(errors: list[dict]) -> str:
    """The first validation problem as `where: what`, and how many more there are."""
    first = errors[0]
    loc = first["loc"][1:] if first["loc"][:1] == ["body"] else first["loc"]
    where = ".".join(map(str, loc))
    if first["type"] == "json_invalid":
        what = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'cannot parse')})"
    elif not where:  # no body, or a body that is not an object
        what = 'the body must be a JSON object such as {"question": "Как дела?"}'
    else:
        what = f"{where}: {first['msg']}"
    return what + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def create_app(service: ChatService, max_batch: int = 16, max_queue: int = 256, timeout: float | None = 60.0,
               api_key: str | None = None) -> FastAPI:
    """The app around a loaded service; `max_batch` questions at most per decoder call (1: no batching),
    `max_queue` requests waiting at most (then 429), `timeout` seconds a request waits for its
    answer or first streamed token (None: for ever), `api_key` needed by /v1/* and /api/* (None: open)."""
    batcher = Batcher(service, max_batch, max_queue)
    app = FastAPI(title="chitchat", version="0.1.0",
                  description="Russian chit-chat seq2seq model trained by the chitchat DVC pipeline.")
    metrics = Metrics(queue_depth=lambda: batcher.depth)
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics
    _add_error_handlers(app)
    app.add_middleware(BodyCap, limit=MAX_BODY_BYTES)
    if api_key:
        app.add_middleware(KeyGate, key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: 401 and 413 are counted too
    _add_api(app, service, batcher, timeout)
    add_openai_routes(app, service, batcher, timeout, metrics)
    add_metrics_route(app, metrics)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with one line: /api's `detail` (422 for a bad request) or, under /v1,
    OpenAI's `error` (400); 429 and 503 say when to try again; 500 without a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
                   **({"ctx": {"error": str(e["ctx"]["error"])}} if "error" in e.get("ctx", {}) else {})}
                  for e in exc.errors()] or [{"loc": ["body"], "msg": "invalid", "type": "invalid"}]
        if _openai(request):
            loc = errors[0]["loc"][1:] if errors[0]["loc"][:1] == ["body"] else errors[0]["loc"]
            return error_response(400, _one_line(errors), ".".join(map(str, loc)) or None)
        return JSONResponse({"detail": _one_line(errors), "errors": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        decode = exc.status_code == 400  # FastAPI could not decode the body
        if _openai(request):
            return error_response(exc.status_code, f"the body is not valid JSON ({exc.detail})" if decode
                                  else str(exc.detail), headers=exc.headers)
        if decode and request.url.path.startswith("/api/"):
            return JSONResponse({"detail": f"the body is not valid JSON ({exc.detail})"}, status_code=422)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return openai_error(exc) if _openai(request) else JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        request.app.state.metrics.rejected("queue_full")
        if _openai(request):
            return openai_error(exc)
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TimedOut)
    async def timed_out(request: Request, exc: TimedOut) -> JSONResponse:
        request.app.state.metrics.rejected("timeout")
        if _openai(request):
            return openai_error(exc)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(InputError)
    async def damaged_model(request: Request, exc: InputError) -> JSONResponse:
        # a model file read on first use (the retrieval index of rerank_k) is damaged: one log line, no traceback
        log.error("%s %s: %s", request.method, request.url.path, exc)
        if _openai(request):
            return error_response(503, str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback (starlette re-raises after this response)
        message = f"internal error ({type(exc).__name__}); see the server log"
        return error_response(500, message) if _openai(request) else JSONResponse({"detail": message}, status_code=500)


class BodyCap:
    """ASGI middleware: a body over `limit` bytes gets a 413 and is not read further.

    With a Content-Length the header decides before a byte is read (the server reads no more than
    it says). Without one (`Transfer-Encoding: chunked`) the body is read here as it arrives, up to
    the first chunk past `limit` (so at most `limit` + one chunk), then refused; a body within the
    cap is handed to the app as if it had just arrived.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _refuse(400, "bad Content-Length header", scope, receive, send)
            if int(length) > self.limit:
                return await _refuse(413, self.too_big(), scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was in
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await _refuse(413, self.too_big(), scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # what comes after the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    def too_big(self) -> str:
        return f"the body must be at most {self.limit} bytes"


async def _refuse(status: int, detail: str, scope, receive, send) -> None:
    if scope.get("path", "").startswith("/v1/"):
        response = error_response(status, detail, None, "request_too_large" if status == 413 else None)
    else:
        response = JSONResponse({"detail": detail}, status_code=status)
    await response(scope, receive, send)


def _add_api(app: FastAPI, service: ChatService, batcher: Batcher, timeout: float | None) -> None:
    """The JSON API (/api/*) and /health."""

    @app.post("/api/answer", response_model=AnswerResponse, responses={422: {"description": "bad request"}})
    async def answer(body: AnswerRequest) -> AnswerResponse:
        """Answer one question; the answers are ranked best first."""
        start = time.perf_counter()
        if service.task == "lm":
            raise RequestError("this model continues text (model.task lm): use /v1/completions or `chitchat continue`")
        decoding = body.decoding.config()
        future = batcher.submit(body.question, body.category, decoding, body.history)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimedOut(timeout) from None
        return AnswerResponse(
            answers=[AnswerOut(text=a.text, score=a.score if math.isfinite(a.score) else None) for a in reply.answers],
            category=reply.category, question=reply.question, truncated=reply.truncated,
            history_turns=reply.history_turns,
            latency_ms=round((time.perf_counter() - start) * 1000, 2), decoding=DecodingOptions(**asdict(decoding)))

    @app.get("/api/categories")
    async def categories() -> dict:
        """The categories the model knows; `conditioned` false: they do not change its answers;
        `condition_field` speaker: they are characters the model answers as."""
        return {"categories": service.categories, "conditioned": service.conditioned,
                "condition_field": service.condition_field}

    @app.get("/api/limits")
    async def caps() -> dict:
        """What a request may ask for, and the decoding defaults (the page builds its form from them)."""
        return limits.as_dict()

    @app.get("/health")
    async def health() -> dict:
        """Liveness; answers at once even while a decode is running."""
        return {"status": "ok", "model": {"type": service.model_type, "conditioned": service.conditioned,
                                          "categories": len(service.categories), "max_history": service.max_history,
                                          "condition_field": service.condition_field},
                "busy": batcher.busy, "waiting": len(batcher.waiting), "decoder_calls": batcher.calls}


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                   log_level: str = "warning") -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread (port 0: any free one); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
