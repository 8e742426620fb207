"""What every course API shares: one error schema, one validation style, a body limit, health, metrics, logs.

    app = create_service("Product image classifier", max_body_bytes=256 * 1024,
                         info=lambda: {"classes": classes}, warmup=lambda: predict(zeros), about=saved.about())
    @app.post("/predict") ...

``create_service`` returns a FastAPI app that already has

- ``GET /health``: liveness, ``{"status": "ok", **info()}`` as soon as the process answers;
- ``GET /ready``: readiness, 200 ``{"status": "ready", "model": about}`` once ``warmup()`` has run
  (in a background thread started with the app, so ``/health`` answers meanwhile), else 503;
- ``GET /metrics``: Prometheus text (``prometheus-client``): ``lm4f_http_requests_total`` and
  ``lm4f_http_errors_total`` (4xx and 5xx) by route, method and status, and the latency histogram
  ``lm4f_http_request_duration_seconds`` by route and method. Routes are the app's path templates
  (``unmatched`` for paths it does not have), so a scanner cannot blow up the label set. With
  several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as ``lm4f.serve --workers N`` does)
  the figures are summed over the workers;
- one JSON log line per request on the logger ``lm4f.access`` (request id, method, route, status,
  milliseconds, bytes in and out). Never the body, the query string, the client's address or its
  user agent: requests carry customers' words. The request id (the caller's ``X-Request-ID`` when it
  is a plain token, else a new one) comes back in the ``X-Request-ID`` header;
- a request-body limit (``BodySizeLimit``) checked before anything parses the body: 413 from the
  ``Content-Length`` header alone, or as soon as the bytes that arrive pass ``max_body_bytes``;
- one error schema, ``ErrorResponse``: ``{"detail": readable text that says how to fix it, "code":
  short machine-readable code}`` plus ``errors`` (one entry per invalid field) on validation
  errors, and, on OpenAI-compatible ``/v1/`` paths, OpenAI's ``error`` object with the same text;
- one validation style: Pydantic request models, and a 422 whose ``detail`` has one readable phrase
  per problem and an example of a valid body (``explain``). Routes raise ``ServiceError`` for
  problems only the model can see (an unknown id);
- OpenAPI docs at ``/docs`` and ``/openapi.json``.

``log_config(level)`` is the logging set-up ``python -m lm4f.serve`` gives uvicorn: the request log
and uvicorn's own messages as JSON lines on stdout. Without it (in a notebook) the request log stays
silent, as Python logs below WARNING are by default.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = [
    "ErrorResponse",
    "ServiceError",
    "BodySizeLimit",
    "JsonFormatter",
    "log_config",
    "create_service",
    "error_response",
    "explain",
]

ACCESS_LOG = logging.getLogger("lm4f.access")
log = logging.getLogger("lm4f.apps")

ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error", 502: "backend_error",
               503: "not_ready"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# ---------------------------------------------------------------------------------------------
# One error schema
# ---------------------------------------------------------------------------------------------
class FieldError(BaseModel):
    loc: list[str] = Field(description="where the problem is, e.g. [\"body\", \"text\"]")
    msg: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx of every course API has this shape."""

    detail: str = Field(description="what is wrong and how to fix it, for a person")
    code: str = Field(description="short machine-readable code, e.g. invalid_request, request_too_large")
    errors: list[FieldError] | None = Field(default=None, description="validation errors only: one per field")


ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 404, 413, 422, 500, 503)}


class ServiceError(Exception):
    """Raise in a route for a problem only the model can see (an unknown id): ``status``, ``detail``, ``code``."""

    def __init__(self, status: int, detail: str, code: str | None = None, param: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.code, self.param = status, detail, code, param


def error_response(status: int, detail: str, path: str, code: str | None = None, param: str | None = None,
                   errors: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    """The one error body: ``detail``, ``code`` (and ``errors``); on ``/v1/`` paths also OpenAI's ``error`` object."""
    code = code or ERROR_CODES.get(status, "error")
    body: dict = {"detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    if path.startswith("/v1/"):  # OpenAI-compatible routes: OpenAI clients show error.message
        kind = "invalid_request_error" if status < 500 else "server_error"
        body["error"] = {"message": detail, "type": kind, "param": param, "code": code}
    return JSONResponse(status_code=status, content=body, headers=headers)


def explain(errors: list[dict], example: str = "", hints: Callable[[str], list[str]] | None = None) -> str:
    """One readable phrase per validation error, then ``hints(text)`` and an example of a valid body."""
    parts = []
    for error in errors:
        loc = [str(item) for item in error.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        location = ".".join(loc) or "body"
        kind = error.get("type", "")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ").rstrip(".")
        if kind == "json_invalid":
            parts.append("the body is not valid JSON")
        elif kind == "missing":
            parts.append(f"{location}: Field required")
        elif kind == "model_attributes_type" or (kind == "dict_type" and location == "body"):
            parts.append("the body must be a JSON object")
        else:
            parts.append(f"{location}: {message}")
    text = "; ".join(dict.fromkeys(parts))
    extra = hints(text) if hints else []
    return text + "".join(f". {hint}" for hint in extra) + (f". Send JSON like {example}" if example else "")


# ---------------------------------------------------------------------------------------------
# The body limit, checked before parsing
# ---------------------------------------------------------------------------------------------
class BodySizeLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` before anything parses it.

    It checks the ``Content-Length`` header first (413 without reading the body), then counts the
    bytes that actually arrive (a missing or wrong header, a chunked upload), and hands the
    application the body it has read. ``advice`` ends the 413 message (what a valid request is).
    """

    def __init__(self, app, max_bytes: int, advice: str = "", route_limits: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.advice = advice
        self.route_limits = dict(route_limits or {})  # path -> its own limit (an upload route takes more)

    async def _refuse(self, scope, send, status: int, detail: str):
        response = error_response(status, detail, scope.get("path", ""))
        await response(scope, self._drain, send)

    @staticmethod
    async def _drain():
        return {"type": "http.disconnect"}

    def _too_large(self, size: int | None, limit: int) -> str:
        shown = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        return (f"the request body is {shown}; this server accepts at most {limit:,} bytes."
                + (f" {self.advice}" if self.advice else ""))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.route_limits.get(scope.get("path", ""), self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(scope, send, 400, f"Content-Length must be a number of bytes, got {declared!r}.")
                return
            if size > limit:
                await self._refuse(scope, send, 413, self._too_large(size, limit))
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > limit:
                await self._refuse(scope, send, 413, self._too_large(None, limit))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------------
# Metrics and the JSON request log
# ---------------------------------------------------------------------------------------------
class Metrics:
    """The three Prometheus metrics of one app, in a registry of its own (several apps can share a process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = ("route", "method", "status")
        self.requests = Counter("lm4f_http_requests", "HTTP requests answered, by route, method and status",
                                labels, registry=self.registry)
        self.errors = Counter("lm4f_http_errors", "HTTP requests answered with a 4xx or 5xx status, by route, "
                              "method and status", labels, registry=self.registry)
        self.latency = Histogram("lm4f_http_request_duration_seconds", "Time from request to the last byte of "
                                 "the response, by route and method", ("route", "method"), registry=self.registry,
                                 buckets=LATENCY_BUCKETS)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: sum what each wrote to the shared folder
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class RequestObserver:
    """ASGI middleware (outermost): request id, metrics and one JSON log line per request."""

    def __init__(self, app, routes: list, metrics: Metrics):
        self.app = app
        self.routes = routes
        self.metrics = metrics

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match in (Match.FULL, Match.PARTIAL):  # PARTIAL: the path exists, the method does not
                return getattr(route, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if REQUEST_ID.match(offered) else uuid.uuid4().hex
        scope["lm4f.request_id"] = request_id
        route, method = self._route(scope), scope.get("method", "")
        seen = {"status": 500, "bytes_in": 0, "bytes_out": 0}

        async def counting_receive():
            message = await receive()
            seen["bytes_in"] += len(message.get("body", b""))
            return message

        async def observed_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            elif message["type"] == "http.response.body":
                seen["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            status = seen["status"]
            self.metrics.observe(route, method, status, seconds)
            fields = {"request_id": request_id, "method": method, "route": route, "status": status,
                      "duration_ms": round(seconds * 1000.0, 2), "bytes_in": seen["bytes_in"],
                      "bytes_out": seen["bytes_out"]}
            ACCESS_LOG.log(logging.ERROR if status >= 500 else logging.INFO, "request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC), level, logger, event, then the record's ``fields`` (and any traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name,
                "event": record.getMessage()}
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_config(level: str = "info") -> dict:
    """A ``logging.config.dictConfig`` that writes the ``lm4f`` loggers (the request log included) and uvicorn's
    own as JSON lines on stdout. ``lm4f.serve`` hands it to uvicorn, which applies it in every worker."""
    level = level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {name: {"handlers": ["stdout"], "level": level, "propagate": False}
                    for name in ("lm4f", "uvicorn")},
    }


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
class _Readiness:
    def __init__(self, warmup: Callable[[], object] | None):
        self.warmup = warmup
        self.ready = warmup is None
        self.failure: str | None = None

    def run(self):
        try:
            self.warmup()
            self.ready = True
        except Exception as error:  # the model cannot answer: stay not ready, say why
            log.exception("warm-up failed")
            self.failure = f"{type(error).__name__}: {error}"


def create_service(title: str, *, description: str = "", version: str = "1.0", max_body_bytes: int,
                   body_advice: str = "", info: Callable[[], dict] | None = None,
                   warmup: Callable[[], object] | None = None, about: dict | None = None,
                   examples: dict[str, str] | None = None, hints: Callable[[str], list[str]] | None = None,
                   route_limits: dict[str, int] | None = None) -> FastAPI:
    """A FastAPI app with the shared machinery (see the module docstring); add the case's routes to it.

    ``max_body_bytes`` limits every request body; ``route_limits`` ({path: bytes}) gives a route its
    own limit instead (an image upload needs megabytes where a JSON body needs kilobytes).

    ``info()`` adds to ``/health``; ``warmup()`` runs once at start-up before ``/ready`` says ready;
    ``about`` (e.g. ``SavedModel.about()``) is what ``/ready`` reports about the model; ``examples``
    maps a route path to an example body shown in 422 messages; ``hints(text)`` adds hints to them.
    """
    readiness = _Readiness(warmup)
    examples = examples or {}

    @asynccontextmanager
    async def lifespan(app):
        if warmup is not None:
            threading.Thread(target=readiness.run, daemon=True, name="lm4f-warmup").start()
        yield

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan,
                  responses=ERROR_RESPONSES)
    metrics = Metrics()
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, advice=body_advice, route_limits=route_limits)
    app.add_middleware(RequestObserver, routes=app.router.routes, metrics=metrics)  # added last: outermost
    app.state.metrics = metrics
    app.state.readiness = readiness

    def offered() -> str:
        routes = [f"{sorted(route.methods - {'HEAD'})[0]} {route.path}" for route in app.routes
                  if getattr(route, "methods", None) and getattr(route, "include_in_schema", False)]
        return ", ".join(routes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        path = request.url.path
        errors = [{"loc": [str(item) for item in e.get("loc", ())], "msg": e.get("msg", "")} for e in error.errors()]
        return error_response(422, explain(error.errors(), examples.get(path, ""), hints), path, errors=errors)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return error_response(error.status, error.detail, request.url.path, code=error.code, param=error.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = (f"there is no {request.method} {request.url.path} here; the service offers {offered()} "
                      "(GET /docs describes them)")
        elif error.status_code == 405:
            detail = f"{request.url.path} does not accept {request.method}; see GET /docs for the methods"
        return error_response(error.status_code, detail, request.url.path, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        request_id = request.scope.get("lm4f.request_id", "")
        log.error("unhandled error", exc_info=error, extra={"fields": {"request_id": request_id}})
        return error_response(500, f"internal error (request id {request_id}); the server logged it",
                              request.url.path)

    @app.get("/health", summary="Liveness: the process answers")
    def health() -> dict:
        return {"status": "ok", **(info() if info else {})}

    @app.get("/ready", summary="Readiness: the model is loaded and warmed up",
             responses={503: {"model": ErrorResponse}})
    def ready():
        if readiness.ready:
            return {"status": "ready", "model": about}
        if readiness.failure:
            return error_response(503, f"the model failed its warm-up ({readiness.failure}); see the log",
                                  "/ready", code="warmup_failed")
        return error_response(503, "the model is still warming up; ask again in a few seconds", "/ready",
                              headers={"Retry-After": "1"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics():
        return metrics.render()

    return app
