"""What running `chitchat serve` in production needs besides the model: an API key gate and metrics.

`KeyGate` is ASGI middleware that asks every request under the protected prefixes (/v1/, /api/)
for `Authorization: Bearer <key>` and answers 401 without reading the body otherwise; the page,
/static, /health and /metrics stay public, so a load balancer and Prometheus need no key.
`resolve_key` picks the key: the `--api-key` option, else the CHITCHAT_API_KEY environment variable.

`Metrics` owns a private prometheus-client registry (never the global one: the tests build many
apps in one process) with the request, latency, first-token, token, queue and rejection series;
`MetricsMiddleware` feeds the per-request ones and `add_metrics_route` exposes them at GET /metrics.
Routes are labelled by their template (`/v1/chat/completions`, `/static`), and every path that
matches no route by "other", so a 404 scan cannot grow the label set without bound.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Callable, Iterable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

KEY_ENV = "CHITCHAT_API_KEY"
# from a 5 ms page or /health to a 60 s long beam-search answer
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
OTHER = "other"  # the route label of every path that matches no route
GONE = "499"  # the status label of a request whose client left before any response was sent


def resolve_key(option: str | None) -> str | None:
    """The API key: `option` (the --api-key value), else $CHITCHAT_API_KEY; stripped, empty is None."""
    for value in (option, os.environ.get(KEY_ENV)):
        if value is not None and value.strip():
            return value.strip()
    return None


class KeyGate:
    """ASGI middleware: paths under `protected` need `Authorization: Bearer <key>` when a key is set.

    A missing header, another scheme or a wrong key gets a 401 with `WWW-Authenticate: Bearer`
    before the body is read: OpenAI's error object under /v1/, `{"detail": ...}` elsewhere. The
    key is compared in constant time (hmac.compare_digest) and never echoed. No key (None or
    empty): every request passes; lifespan and websocket scopes always pass.
    """

    def __init__(self, app, key: str | None, protected: Iterable[str] = ("/v1/", "/api/")):
        self.app = app
        self.key = key.encode("utf-8") if key else None
        self.protected = tuple(protected)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or not _route_path(scope).startswith(self.protected):
            return await self.app(scope, receive, send)
        problem = self.problem(scope)
        if problem is None:
            return await self.app(scope, receive, send)
        if _route_path(scope).startswith("/v1/"):
            body = {"error": {"message": problem, "type": "invalid_request_error", "param": None,
                              "code": "invalid_api_key"}}
        else:
            body = {"detail": problem}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

    def problem(self, scope) -> str | None:
        """Why this request may not pass (one line, without the key it sent), or None: it may."""
        header = next((v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"), None)
        if header is None or not header.strip():
            return "missing API key: send Authorization: Bearer <key>"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "the Authorization header must use the Bearer scheme: send Authorization: Bearer <key>"
        if not hmac.compare_digest(token.strip(), self.key):
            return "wrong API key"
        return None


def _route_path(scope) -> str:
    """The request's path below the app's root_path (what the routes match)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class Metrics:
    """The serving metrics in a registry of their own; `queue_depth` is read at every scrape."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("chitchat_requests_total", "HTTP requests by route template and status",
                                ("route", "status"), registry=r)
        self.request_seconds = Histogram("chitchat_request_seconds",
                                         "from arrival to the last byte of the response body", ("route",),
                                         buckets=BUCKETS, registry=r)
        self.first_token_seconds = Histogram("chitchat_time_to_first_token_seconds",
                                             "from arrival to the first generated token", ("route",),
                                             buckets=BUCKETS, registry=r)
        self.tokens = Counter("chitchat_generated_tokens_total", "tokens generated for answers", registry=r)
        self.in_flight = Gauge("chitchat_requests_in_flight", "HTTP requests being answered now", registry=r)
        self.queue_depth = Gauge("chitchat_queue_depth", "requests waiting for the decoder", registry=r)
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.cancelled_total = Counter("chitchat_generations_cancelled_total",
                                       "generations stopped because the client left before its answer was complete",
                                       registry=r)
        self.rejected_total = Counter("chitchat_requests_rejected_total", "requests refused before decoding",
                                      ("reason",), registry=r)

    def observe_first_token(self, route: str, seconds: float) -> None:
        """A request on `route` got its first token `seconds` after it arrived."""
        self.first_token_seconds.labels(route=route).observe(seconds)

    def add_tokens(self, n: int) -> None:
        """`n` more tokens were generated."""
        self.tokens.inc(n)

    def cancelled(self) -> None:
        """A client disconnected before its answer was complete, and its generation was stopped."""
        self.cancelled_total.inc()

    def rejected(self, reason: str) -> None:
        """A request was refused for `reason` (a fixed word such as "queue_full" or "timeout")."""
        self.rejected_total.labels(reason=reason).inc()

    def observe_request(self, route: str, status: str, seconds: float) -> None:
        """One finished HTTP request (MetricsMiddleware calls it)."""
        self.requests.labels(route=route, status=status).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by route template and final status, and times it.

    The time runs until the last body message is sent (a streamed answer counts whole; background
    tasks after it do not). In flight goes back down in every case: an exception counts as 500 and
    is re-raised; a client that leaves (cancellation) before a response counts as 499.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        before = dict(scope)  # the router adds "route" to scope, a Mount changes root_path
        start = time.perf_counter()
        status: str | None = None
        end: float | None = None

        async def timed_send(message):
            nonlocal status, end
            if message["type"] == "http.response.start":
                status = str(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                end = time.perf_counter()
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            status = "500"
            raise
        finally:
            self.metrics.in_flight.dec()
            seconds = (end or time.perf_counter()) - start
            self.metrics.observe_request(route_label(scope, before, self.app), status or GONE, seconds)


def route_label(scope, before: dict, app=None) -> str:
    """The template of the route that took the request (`scope` after the app ran, `before` it did),
    the mount path for a mounted app such as /static, or "other" where no route matches."""
    route = scope.get("route")
    if getattr(route, "path", None) and scope.get("root_path", "") == before.get("root_path", ""):
        return route.path
    routes = getattr(scope.get("app") or app, "routes", ())
    partial = None
    for candidate in routes:
        match, _ = candidate.matches(before)
        if match == Match.FULL:
            return getattr(candidate, "path", None) or OTHER
        if match == Match.PARTIAL and partial is None:
            partial = getattr(candidate, "path", None)  # the path matched but not the method: a 405
    return partial or OTHER


def add_metrics_route(app: FastAPI, metrics: Metrics) -> None:
    """Register GET /metrics: `metrics` in Prometheus text format (public, not in the OpenAPI schema)."""

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type})
