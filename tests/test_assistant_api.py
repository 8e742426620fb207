"""The assistant served like a product: a real uvicorn server on loopback, driven by the official
``openai`` client (plain and streaming) and by httpx; the ``openai`` backend pointed at that server
(the buy route end to end, offline); bad requests; the ``python -m lm4f.serve`` command line.

The index is built once per module from the real knowledge base (policy passages and a few
products) with the real MiniLM.
"""

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

import lm4f.serving
from lm4f import shop
from lm4f.apps.assistant import MAX_QUESTION_CHARS, create_app
from lm4f.assistant import Assistant, HandoffPolicy, OpenAIBackend, make_backend
from lm4f.nlp import load_minilm
from lm4f.retrieval import build_index, save_settings

MODEL = "lm4f-assistant"
ITEMS = ("1078", "862")
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    passages = [p for p in shop.passages() if not p.id.startswith("product-") or p.id.split("-")[1] in ITEMS]
    built = build_index(passages, tmp_path_factory.mktemp("api") / "index", load_minilm())
    save_settings(built, {"hybrid": {"method": "weighted", "weight": 0.5},
                          "handoff": {"min_dense": 0.35, "min_bm25": 2.5},
                          "extractive": {"item_lexical": 2.0, "part_prior": 1.0}})
    return built


@pytest.fixture(scope="module")
def bot(index):
    return Assistant.from_index(index)


@pytest.fixture(scope="module")
def server(bot):
    running = lm4f.serving.start(create_app(bot, model_name=MODEL, max_body_bytes=16_384))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


def test_health_models_and_ask(http, bot):
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["backend"] == "extractive"
    assert health["passages"] == len(bot.passage_by_id)
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    body = http.post("/ask", json={"question": "Do you accept PayPal?"}).json()
    assert set(body) == {"answer", "citations", "handed_off", "reason", "confidence"}
    assert "PayPal" in body["answer"] and body["citations"][0]["id"] == "payment-01" and not body["handed_off"]
    assert body["citations"][0]["source"] == "policies/payment.md" and 0 < body["confidence"] <= 1


def test_openai_client_gets_the_answer_usage_and_citations(client, bot):
    question = "How much does express shipping cost?"
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "You are helpful."},
                               {"role": "user", "content": question}])
    message = completion.choices[0].message
    assert message.role == "assistant" and message.content == bot.ask(question).answer and "$14.95" in message.content
    assert completion.choices[0].finish_reason == "stop" and completion.model == MODEL
    assert completion.usage.prompt_tokens > completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    extra = completion.model_extra
    assert extra["handed_off"] is False and extra["citations"][0]["id"] == "shipping-01"
    assert {"id", "source", "snippet"} == set(extra["citations"][0])


def test_openai_client_streams_chunks_that_join_to_the_answer(client, bot):
    question = "Which payment methods do you accept?"
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, extra, usage = [], None, {}, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
        extra.update(chunk.model_extra or {})
        usage = chunk.usage or usage
    assert len(pieces) > 3 and "".join(pieces) == bot.ask(question).answer
    assert finish == "stop" and extra["citations"][0]["id"] == "payment-01" and extra["handed_off"] is False
    assert usage.completion_tokens > 0


def test_raw_server_sent_events_end_with_done(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "where is my order 48213"}], "stream": True}
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    last = json.loads(lines[-2][len("data: "):])
    assert last["handed_off"] is True and last["reason"] == "order_lookup" and last["citations"] == []
    assert last["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_cuts_the_answer(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Which payment methods do you accept?"}], max_tokens=6)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens <= 6


def test_openai_backend_pointed_at_our_server_is_the_buy_route_end_to_end(server, bot):
    buy = Assistant(bot.retriever, OpenAIBackend(base_url=server.url + "/v1", model=MODEL), HandoffPolicy())
    question = "What is your return window?"
    reply = buy.ask(question)
    direct = bot.ask(question)
    assert reply.answer == direct.answer and [c.id for c in reply.citations] == [c.id for c in direct.citations]
    assert reply.prompt_tokens > 0 and not reply.handed_off
    stream = buy.stream("Do you accept PayPal?")
    assert "".join(stream) == bot.ask("Do you accept PayPal?").answer
    assert stream.reply.citations[0].id == "payment-01"
    with pytest.raises(ValueError, match="base-url"):
        make_backend("openai", base_url=None, model=None)


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/ask", {"question": "   "}, 422, "at least 1 character"),
    ("/ask", {"question": "x" * (MAX_QUESTION_CHARS + 1)}, 422, f"at most {MAX_QUESTION_CHARS} characters"),
    ("/ask", {"question": 42}, 422, "question: Input should be a valid string"),
    ("/ask", {"question": "ok?", "k": 3}, 422, "Extra inputs are not permitted"),
    ("/ask", [1, 2], 422, "Send JSON like"),
    (CHAT, {"model": MODEL}, 422, "messages: Field required"),
    (CHAT, {"model": MODEL, "messages": []}, 422, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 422, "role is system, developer"),
    (CHAT, {"model": MODEL, "messages": [{"role": "system", "content": "be nice"}]}, 422, "no user message"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422,
     "max_tokens must be a whole number from 1 to 1024"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 422,
     "from 1 to 1024"),
    (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "use model 'lm4f-assistant'"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     422, "only text"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "y" * 1200}]}, 422, "at most 1000"),
])
def test_bad_requests_get_a_4xx_that_says_what_to_send(http, path, body, status, fragment):
    response = http.post(path, json=body)
    assert response.status_code == status
    assert fragment in response.json()["detail"]
    if path == CHAT:
        assert response.json()["error"]["message"] == response.json()["detail"]


def test_openai_client_sees_the_errors(client):
    with pytest.raises(openai.NotFoundError, match="lm4f-assistant"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="1024"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4096)


def test_body_size_is_checked_before_parsing_and_the_server_keeps_serving(http):
    declared = http.post("/ask", content=b'{"question": "' + b"a" * 20_000 + b'"}',
                         headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "at most 16,384 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the server must count the bytes that arrive
        yield b'{"question": "'
        for _ in range(40):
            yield b"b" * 1000
        yield b'"}'

    streamed = http.post("/ask", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "16,384" in streamed.json()["detail"]
    broken = http.post(CHAT, content=b'{"model": "lm4f-assistant", "messages": [', headers={
        "content-type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]
    assert http.post("/ask", json={"question": "Do you accept PayPal?"}).status_code == 200


def test_the_api_answers_quickly_over_loopback(http):
    stats = lm4f.serving.measure_latency(lambda: http.post("/ask", json={"question": "Do you ship to Canada?"}),
                                         requests=20, warmup=3)
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] < 2000


def _serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lm4f.serve", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_serve_cli_usage_and_a_missing_index(tmp_path):
    unknown = _serve("movies2", "--port", "9")
    assert unknown.returncode == 2 and "unknown case 'movies2'" in unknown.stderr and "assistant" in unknown.stderr
    missing = _serve("assistant", "--port", "9", env={"LM4F_MODEL": str(tmp_path / "nothing")})
    assert missing.returncode == 1
    assert f"there is no folder {tmp_path / 'nothing'}" in missing.stderr
    assert "python -m lm4f.train assistant" in missing.stderr


def test_serve_cli_builds_the_app_from_flags_and_environment(index, monkeypatch):
    from lm4f import serve

    monkeypatch.setenv("LM4F_MODEL", str(index.folder))  # a bare index folder (python -m lm4f.assistant build-index)
    monkeypatch.setenv("LM4F_ASSISTANT_SERVED_MODEL", "shop-bot")
    app, args = serve.app_from_argv(["assistant", "--port", "0", "--backend", "extractive"])
    assert args.model == str(index.folder) and args.host == "127.0.0.1" and args.served_model_name == "shop-bot"
    with lm4f.serving.start(app) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="not-needed", max_retries=0)
        completion = client.chat.completions.create(model="shop-bot",
                                                    messages=[{"role": "user", "content": "Do you accept PayPal?"}])
        assert completion.model_extra["citations"][0]["id"] == "payment-01"
    with pytest.raises(serve.UsageError, match="unknown case 'images2'"):
        serve.app_from_argv(["images2"])
    with pytest.raises(ValueError, match="--base-url"):
        serve.app_from_argv(["assistant", "--backend", "openai"])
