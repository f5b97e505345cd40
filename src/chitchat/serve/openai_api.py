"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (docs/serving.md).

The official `openai` client, LangChain, Open WebUI or curl talk to `chitchat serve` as they would
to vLLM or llama.cpp's server. A chat request's last user message is the question and the turns
before it the dialogue history, as the model was trained (`prepare.max_history`); a system
message that names one of the model's categories (or characters) sets it. Every request goes
through the same Batcher as /api/answer, streamed or not, so they share batched decoder calls.

Streaming is Server-Sent Events in OpenAI's chunk format: the role first, then one chunk per new
piece of text (chitchat.answering.streaming decides what is safe to show), exactly one
finish_reason per choice, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`.
A client that leaves stops its generation at the next token. Errors have OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import ChatService, Reply, RequestError
from chitchat.answering.streaming import AnswerStream
from chitchat.serve.batcher import Batcher, QueueFull
from chitchat.serve.openai_schema import ChatRequest, CompletionRequest, ParamError, Sampling

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "server_error", 500: "server_error"}
END = object()  # every job of a generation has its outcome


class TimedOut(RuntimeError):
    """A request waited past --timeout for the model."""

    def __init__(self, timeout: float):
        super().__init__(f"no answer within --timeout {timeout:g} s: the server is overloaded; try again later")


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def model_id(service: ChatService) -> str:
    """The id /v1/models lists, e.g. chitchat-gru."""
    return f"chitchat-{service.model_type}"


class Generation:
    """One request's jobs (one per prompt) in the batcher, their answers arriving as events.

    Each event is (choice index, new text, finish reason or None), choice index = prompt * n +
    answer, in the order the decoding thread produced them; END follows the last one.
    """

    def __init__(self, batcher: Batcher, questions: list[tuple[str, str | None, list[str]]], body: Sampling,
                 decoding: DecodingConfig):
        self.decoding = decoding
        self.n, self.loop = self.decoding.n, asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        decode = batcher.service.tokenizer.decode if batcher.service.tokenizer is not None else str
        self.streams = [AnswerStream(decode, self.n, body.stop or (), sink=self._sink(i)) for i in range(len(questions))]
        self.futures: list[asyncio.Future] = []
        self.finished = False
        self.gone = False  # its client disconnected before the answer was in
        try:
            for (question, category, history), stream in zip(questions, self.streams):
                self.futures.append(batcher.submit(question, category, self.decoding, history, stream))
        except QueueFull:
            self.cancel()
            raise
        self._left = len(self.futures)
        for future in self.futures:
            future.add_done_callback(self._done)

    def _sink(self, job: int) -> Callable[[int, str, str | None], None]:
        def sink(index: int, piece: str, finish: str | None) -> None:  # in the decoding thread
            self.loop.call_soon_threadsafe(self.events.put_nowait, (job * self.n + index, piece, finish))
        return sink

    def _done(self, _future) -> None:
        self._left -= 1
        if not self._left:
            self.events.put_nowait(END)

    def cancel(self) -> None:
        """Stop every answer at its next token and drop the jobs still waiting."""
        for stream in self.streams:
            stream.cancel()
        for future in self.futures:
            future.cancel()

    async def next(self, timeout: float | None = None):
        """The next event or END; TimedOut (everything cancelled) past `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except asyncio.TimeoutError:
            self.cancel()
            raise TimedOut(timeout) from None

    def replies(self) -> list[Reply]:
        """After END: every job's Reply, or the first job's error raised."""
        self.finished = True
        return [future.result() for future in self.futures]

    def choices(self) -> list[tuple[str, str]]:
        """(text, finish reason) per choice, in choice-index order."""
        return [(c.text, c.finish or "stop") for stream in self.streams for c in stream.choices]

    def usage(self, replies: list[Reply]) -> dict:
        prompt = sum(r.src_tokens for r in replies)
        completion = sum(s.tokens for s in self.streams)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def add_openai_routes(app: FastAPI, service: ChatService, batcher: Batcher, timeout: float | None,
                      metrics=None) -> None:
    """/v1/models, /v1/chat/completions and /v1/completions on `app`."""
    name = model_id(service)
    card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "chitchat"}

    @app.get("/v1/models")
    async def models() -> dict:
        """The one model this server serves."""
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model}")
    async def one_model(model: str):
        return card if model == name else openai_error(ModelNotFound(model, name))

    def start(body: Sampling, questions) -> Generation:
        if body.model is not None and body.model != name:
            raise ModelNotFound(body.model, name)
        body.refuse_unsupported()
        category = body.category or body.persona
        checked = [(q, service.resolve_category(c if c is not None else category), h) for q, c, h in questions]
        decoding = service.check_decoding(body.decoding())  # once: a sampled request draws its seed here
        return Generation(batcher, checked, body, decoding)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        """A chat answer: the last user message is the question, the turns before it its history."""
        if service.task == "lm":
            raise ParamError("messages", "this model continues text (model.task lm): send a prompt to /v1/completions")
        question, history, system = body.dialogue()
        category = None if (body.category or body.persona) else _system_category(service, system)
        run = start(body, [(question, category, history)])
        return await _respond(request, run, body, "chat.completion", name, timeout, metrics, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """Each prompt continued (model.task lm), or read as a question (a chit-chat model)."""
        run = start(body, [(prompt, None, []) for prompt in body.prompts()])
        return await _respond(request, run, body, "text_completion", name, timeout, metrics, "/v1/completions")


class ModelNotFound(RequestError):
    def __init__(self, asked: str, served: str):
        super().__init__(f"the model {asked!r} does not exist here; this server serves {served!r}")


def _system_category(service: ChatService, lines: list[str]) -> str | None:
    """The first system line that names a known category or character; other system text (a
    client's default "You are a helpful assistant") does not steer this model and is left aside."""
    for line in lines:
        try:
            found = service.resolve_category(line)
        except RequestError:
            continue
        if found:
            return found
    return None


def _chunk(kind: str, rid: str, created: int, model: str, choices: list, usage=None, with_usage=False) -> str:
    body = {"id": rid, "object": f"{kind}.chunk" if kind == "chat.completion" else kind, "created": created,
            "model": model, "choices": choices}
    if with_usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _choice(kind: str, index: int, text: str | None, finish: str | None, first: bool = False) -> dict:
    if kind == "chat.completion":
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}


async def _respond(request: Request, run: Generation, body: Sampling, kind: str, model: str, timeout, metrics,
                   route):
    """The whole answer as JSON, or (stream) an SSE response once the first event is in."""
    rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
    created, began = int(time.time()), time.perf_counter()
    watcher = None if body.stream else asyncio.ensure_future(_watch_disconnect(request, run, metrics))
    try:
        first = await run.next(timeout)
        if first is END or not body.stream:
            event = first
            deadline = None if timeout is None else began + timeout
            while event is not END:
                event = await run.next(None if deadline is None else max(0.001, deadline - time.perf_counter()))
    except BaseException as exc:  # timed out, or the client left (cancelled): its generation stops too
        run.cancel()
        if isinstance(exc, asyncio.CancelledError) and metrics is not None:
            metrics.cancelled()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if run.gone:
        return JSONResponse({"error": {"message": "the client closed the request", "type": "client_closed",
                                       "param": None, "code": None}}, status_code=499)
    if first is END or not body.stream:
        replies = run.replies()  # raises the request's error
        if metrics is not None and not body.stream:
            metrics.add_tokens(sum(s.tokens for s in run.streams))
    if not body.stream:
        out = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                "logprobs": None} if kind == "chat.completion" else
               {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
               for i, (text, finish) in enumerate(run.choices())]
        return {"id": rid, "object": kind, "created": created, "model": model, "choices": out,
                "usage": run.usage(replies), "system_fingerprint": None}
    if metrics is not None:
        metrics.observe_first_token(route, time.perf_counter() - began)
    events = _sse(run, first, body, kind, rid, created, model, metrics)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _watch_disconnect(request: Request, run: "Generation", metrics) -> None:
    """A non-streamed request whose client leaves stops its generation too (uvicorn does not cancel
    the handler: it only reports the disconnect to whoever reads the request's messages)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.gone = True
            run.cancel()
            if metrics is not None:
                metrics.cancelled()
            return


async def _sse(run: Generation, first, body: Sampling, kind: str, rid: str, created: int, model: str,
               metrics) -> AsyncIterator[str]:
    usage_too = body.include_usage
    try:
        if kind == "chat.completion":
            yield _chunk(kind, rid, created, model, [_choice(kind, i, None, None, first=True)
                                                     for i in range(len(run.streams) * run.n)], None, usage_too)
        event = first
        while event is not END:
            index, piece, finish = event
            yield _chunk(kind, rid, created, model, [_choice(kind, index, piece, finish)], None, usage_too)
            event = await run.next()
        try:
            replies = run.replies()
        except Exception as exc:  # noqa: BLE001  (the stream has begun: the error goes in it)
            yield f"data: {json.dumps({'error': _error_fields(exc)}, ensure_ascii=False)}\n\n"
        else:
            if usage_too:
                yield _chunk(kind, rid, created, model, [], run.usage(replies), True)
        yield "data: [DONE]\n\n"
    finally:
        if not run.finished:  # the client left (or the server stops): its generation stops too
            run.cancel()
            if metrics is not None:
                metrics.cancelled()
        if metrics is not None:
            metrics.add_tokens(sum(s.tokens for s in run.streams))


def _error_fields(exc: Exception) -> dict:
    status = 400 if isinstance(exc, RequestError) else 500
    message = str(exc) if status == 400 else f"internal error ({type(exc).__name__}); see the server log"
    return {"message": message, "type": ERROR_TYPES[status], "param": getattr(exc, "param", None), "code": None}


def openai_error(exc: Exception) -> JSONResponse | None:
    """The /v1 response for an exception the routes raise (None: not one of theirs)."""
    if isinstance(exc, ModelNotFound):
        return error_response(404, str(exc), "model", "model_not_found")
    if isinstance(exc, QueueFull):
        return error_response(429, str(exc), None, "queue_full", {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TimedOut):
        return error_response(503, str(exc), None, "timeout", {"Retry-After": "5"})
    if isinstance(exc, ParamError):
        return error_response(400, str(exc), exc.param, None)
    if isinstance(exc, RequestError):
        return error_response(400, str(exc), None, None)
    return None
