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
``GET /health``, ``/ready`` and ``/metrics``, the JSON request log, the body limit and the error
schema come from ``lm4f.apps.service``; a saved assistant (``python -m lm4f.train assistant``) is
served with ``python -m lm4f.serve assistant``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from lm4f.apps.service import create_service, error_response

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
def _backend_failed(error: Exception, path: str):
    """A 502 when the backend (a model, a remote endpoint) raised, logged with its traceback."""
    log.exception("answering failed")
    return error_response(502, f"the answering backend failed: {type(error).__name__}: {error}", path,
                          code="backend_error")


def _hints(text: str) -> list[str]:
    """What to do about the chat-completions fields people get wrong most."""
    hints = []
    if "max_tokens" in text or "max_completion_tokens" in text:
        hints.append(f"max_tokens must be a whole number from 1 to {MAX_TOKENS}")
    if ".role" in text:
        hints.append("each message's role is system, developer, user or assistant")
    return hints


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
               title: str = "Maple & Thread customer-service assistant", about: dict | None = None) -> FastAPI:
    """Build the FastAPI app around an ``lm4f.assistant.Assistant``; ``model_name`` is the model id it serves.

    ``about`` (e.g. ``SavedModel.about()``) is what ``/ready`` reports about the model. The warm-up
    runs one retrieval (MiniLM and BM25), not the answering backend, which may be a remote endpoint.
    """
    app = create_service(
        title, description="Answers customers' questions from the shop's knowledge, with citations; "
                           "OpenAI-compatible under /v1.",
        max_body_bytes=max_body_bytes, examples=EXAMPLES, hints=_hints, about=about,
        info=lambda: {"model": model_name, **assistant.describe()},
        warmup=lambda: assistant.retriever.search("How long do I have to return an item?", k=1),
        body_advice=f"Send one question of at most {MAX_QUESTION_CHARS} characters (and a short conversation).")
    created = int(time.time())

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
            return error_response(404, f"model {request.model!r} is not served here; use model {model_name!r} "
                                       "(GET /v1/models lists it)", path, code="model_not_found", param="model")
        try:
            question = question_from(request.messages)
        except ValueError as error:
            return error_response(422, f"messages: {error}. Send JSON like {EXAMPLES[path]}", path, param="messages")
        if not question:
            return error_response(422, "messages: the last user message is empty; put the customer's question "
                                       f"in it. Send JSON like {EXAMPLES[path]}", path, param="messages")
        if len(question) > MAX_QUESTION_CHARS:
            return error_response(422, f"messages: the question (last user message) has {len(question):,} "
                                       f"characters; send at most {MAX_QUESTION_CHARS}", path, param="messages")
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
