"""The customer-service assistant as an HTTP service with an OpenAI-compatible API (case study 6.2).

    app = create_app(Assistant.from_index("models/assistant/index"), model_name="lm4f-assistant")
    server = lm4f.serving.start(app)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed")
    client.chat.completions.create(model="lm4f-assistant",
                                   messages=[{"role": "user", "content": "Do you ship to Canada?"}])

Endpoints:

- ``POST /v1/chat/completions``: the OpenAI chat-completions schema, so any OpenAI client, SDK or
  tool can use the shop's assistant. The question is the last user message (when that message is
  the course's retrieval prompt, ``lm4f.local_lm.build_messages``, the text after its last
  ``Question:``). The answer is ``choices[0].message.content``; ``usage`` counts tokens; the extra
  top-level fields ``citations`` (list of ``{id, source, snippet}``), ``handed_off`` and ``reason``
  say what the answer rests on and whether a person takes over. ``"stream": true`` sends the answer
  as server-sent events in OpenAI's ``chat.completion.chunk`` format (the last chunk carries the
  extra fields), ending with ``data: [DONE]``.
- ``GET /v1/models``: the one model served.
- ``POST /ask`` ``{"question": "..."}`` -> ``{"answer", "citations", "handed_off", "reason", "confidence"}``.
- ``GET /health``.

Every request body is typed by a Pydantic model (unknown fields are refused). A bad request gets a
4xx whose ``detail`` says what to send instead (and, on ``/v1`` paths, the same text in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape, which OpenAI clients show). The request
body's size is checked *before* it is parsed, from ``Content-Length`` and from the bytes that
actually arrive: a body over ``max_body_bytes`` gets 413. The server keeps serving after any of them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_QUESTION_CHARS = 1000
MAX_TOKENS = 1024
MAX_BODY_BYTES = 64 * 1024  # a question of 1,000 characters plus a long conversation and five passages fit easily
PROMPT_QUESTION_MARK = "\nQuestion:"

EXAMPLES = {
    "/ask": '{"question": "How long do I have to return an item?"}',
    "/v1/chat/completions": ('{"model": "MODEL", "messages": [{"role": "user", "content": '
                             '"How long do I have to return an item?"}]}'),
}

log = logging.getLogger("lm4f.apps.assistant")


# ---------------------------------------------------------------------------------------------
# Request and response models
# ---------------------------------------------------------------------------------------------
class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUESTION_CHARS,
                                               strict=True)]


class CitationOut(BaseModel):
    id: str
    source: str
    snippet: str


class AskResponse(BaseModel):
    answer: str
    citations: list[CitationOut]
    handed_off: bool
    reason: str | None = Field(description="why a person takes over: order_lookup, complaint, out_of_scope, "
                                           "human_request or low_confidence; null when answered")
    confidence: float = Field(description="how well the best passage matches the question, 0 to 1")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def text_only(cls, content):
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                    raise ValueError('only text is understood: send content as a string, or as a list of '
                                     '{"type": "text", "text": "..."} parts')
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


TokenLimit = Annotated[int, Field(ge=1, le=MAX_TOKENS, strict=True)]


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request. Sampling fields are accepted for compatibility; the
    extractive backend is deterministic and ignores them."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def _error(status: int, detail: str, path: str, code: str = "invalid_request", param: str | None = None):
    """A 4xx/5xx with ``detail`` (as every course API) and, on /v1 paths, OpenAI's ``error`` object."""
    body: dict = {"detail": detail}
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body["error"] = {"message": detail, "type": kind, "param": param, "code": code}
    return JSONResponse(status_code=status, content=body)


def _backend_failed(error: Exception, path: str):
    """A 502 when the backend (a model, a remote endpoint) raised, logged with its traceback."""
    log.exception("answering failed")
    return _error(502, f"the answering backend failed: {type(error).__name__}: {error}", path, code="backend_error")


def _explain(errors: list[dict], path: str) -> str:
    """One readable sentence per validation error, then an example of a valid body."""
    parts = []
    for error in errors:
        location = ".".join(str(item) for item in error.get("loc", ()) if item != "body") or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append("the body is not valid JSON")
        elif kind == "missing":
            parts.append(f"{location}: Field required")
        elif kind == "extra_forbidden":
            parts.append(f"{location}: Extra inputs are not permitted (unknown field)")
        elif kind == "model_attributes_type" or (kind == "dict_type" and location == "body"):
            parts.append("the body must be a JSON object")
        else:
            parts.append(f"{location}: {error.get('msg', 'invalid')}")
    hints = []
    text = "; ".join(dict.fromkeys(parts))
    if "max_tokens" in text or "max_completion_tokens" in text:
        hints.append(f"max_tokens must be a whole number from 1 to {MAX_TOKENS}")
    if ".role" in text:
        hints.append("each message's role is system, developer, user or assistant")
    example = EXAMPLES.get(path, "")
    return text + "".join(f". {hint}" for hint in hints) + (f". Send JSON like {example}" if example else "")


class BodySizeLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` before anything parses it.

    It checks the ``Content-Length`` header first (413 without reading the body), then counts the
    bytes that actually arrive (a missing or wrong header, a chunked upload), and hands the
    application the body it has read.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope, send, status: int, detail: str):
        response = _error(status, detail, scope.get("path", ""), code="request_too_large" if status == 413 else
                          "invalid_request")
        await response(scope, self._drain, send)

    @staticmethod
    async def _drain():
        return {"type": "http.disconnect"}

    def _too_large(self, size: int | None) -> str:
        shown = f"{size:,} bytes" if size is not None else f"more than {self.max_bytes:,} bytes"
        return (f"the request body is {shown}; this server accepts at most {self.max_bytes:,} bytes. "
                f"Send one question of at most {MAX_QUESTION_CHARS} characters (and a short conversation).")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(scope, send, 400, f"Content-Length must be a number of bytes, got {declared!r}.")
                return
            if size > self.max_bytes:
                await self._refuse(scope, send, 413, self._too_large(size))
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                await self._refuse(scope, send, 413, self._too_large(None))
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
# The app
# ---------------------------------------------------------------------------------------------
def question_from(messages: list[ChatMessage]) -> str:
    """The question: the last user message; for the course's retrieval prompt, the text after its last ``Question:``."""
    users = [message for message in messages if message.role == "user"]
    if not users:
        raise ValueError("no user message: the last message with role 'user' holds the question")
    text = users[-1].text()
    if text.startswith("Passages:") and PROMPT_QUESTION_MARK in text:
        text = text.rsplit(PROMPT_QUESTION_MARK, 1)[1]
    return text.strip()


def create_app(assistant, model_name: str = "lm4f-assistant", max_body_bytes: int = MAX_BODY_BYTES,
               title: str = "Maple & Thread customer-service assistant") -> FastAPI:
    """Build the FastAPI app around an ``lm4f.assistant.Assistant``; ``model_name`` is the model id it serves."""
    app = FastAPI(title=title, version="1.0")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        response = _error(422, _explain(error.errors(), request.url.path), request.url.path)
        body = json.loads(response.body)
        body["errors"] = [{"loc": [str(item) for item in e.get("loc", ())], "msg": e.get("msg", "")}
                          for e in error.errors()]
        return JSONResponse(status_code=422, content=body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = (f"there is no {request.method} {request.url.path} here; the service offers POST /ask, "
                      "POST /v1/chat/completions, GET /v1/models and GET /health")
        elif error.status_code == 405:
            detail = f"{request.url.path} does not accept {request.method}; see GET /docs for the methods"
        return _error(error.status_code, detail, request.url.path)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, **assistant.describe()}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lm4f"}]}

    @app.post("/ask", response_model=AskResponse)
    def ask(request: AskRequest):
        try:
            reply = assistant.ask(request.question)
        except Exception as error:  # an upstream endpoint (openai backend) failed
            return _backend_failed(error, "/ask")
        return reply.to_dict()

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest):
        path = "/v1/chat/completions"
        if request.model != model_name:
            return _error(404, f"model {request.model!r} is not served here; use model {model_name!r} "
                               "(GET /v1/models lists it)", path, code="model_not_found", param="model")
        try:
            question = question_from(request.messages)
        except ValueError as error:
            return _error(422, f"messages: {error}. Send JSON like {EXAMPLES[path]}", path, param="messages")
        if not question:
            return _error(422, "messages: the last user message is empty; put the customer's question in it. "
                               f"Send JSON like {EXAMPLES[path]}", path, param="messages")
        if len(question) > MAX_QUESTION_CHARS:
            return _error(422, f"messages: the question (last user message) has {len(question):,} characters; "
                               f"send at most {MAX_QUESTION_CHARS}", path, param="messages")
        limit = request.max_completion_tokens or request.max_tokens
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            try:
                stream = assistant.stream(question, max_tokens=limit)
            except Exception as error:
                return _backend_failed(error, path)
            return StreamingResponse(_events(stream, completion_id, now, model_name, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            reply = assistant.ask(question, max_tokens=limit)
        except Exception as error:
            return _backend_failed(error, path)
        body = reply.to_dict()
        return {
            "id": completion_id, "object": "chat.completion", "created": now, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.answer},
                         "finish_reason": reply.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
            "citations": body["citations"], "handed_off": reply.handed_off, "reason": reply.reason,
            "confidence": body["confidence"],
        }

    return app


def _events(stream, completion_id: str, created: int, model: str, include_usage: bool):
    """Server-sent events in OpenAI's chunk format: role, content pieces, a last chunk with the extra fields, [DONE]."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        for piece in stream:
            yield chunk({"content": piece})
    except Exception as error:  # the backend failed mid-answer: say so in the stream, then end it
        log.exception("streaming failed")
        failure = {"error": {"message": f"{type(error).__name__}: {error}", "type": "server_error"}}
        yield f"data: {json.dumps(failure)}\n\n"
        yield "data: [DONE]\n\n"
        return
    reply = stream.reply
    body = reply.to_dict()
    yield chunk({}, reply.finish_reason, citations=body["citations"], handed_off=reply.handed_off,
                reason=reply.reason, confidence=body["confidence"])
    if include_usage:
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                 "total_tokens": reply.prompt_tokens + reply.completion_tokens}
        last = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage}
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"
