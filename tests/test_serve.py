"""Every case study served from a saved model: save -> load -> serve, and what every app shares.

For each case (reviews, images, movies, assistant) a small real model is trained on the real data in
a temporary models folder, saved as a version (lm4f.saved_models), loaded by the serve command line
(lm4f.serve) and called through FastAPI's TestClient: health, readiness, Prometheus metrics, one JSON
log line per request without the body, a body limit checked before parsing, one error schema with a
readable detail, the OpenAPI docs, and a corrupt or missing model file that stops the command with
the file's name and the rebuild command. One test runs the real command (uvicorn, two workers) in a
subprocess and calls it over loopback.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import lm4f
import lm4f.serving
from lm4f import data, serve, shop, vision
from lm4f import recsys as rs
from lm4f.apps.service import JsonFormatter
from lm4f.nlp import LABEL, ReviewRetriever, TfidfClassifier, clean_reviews, load_minilm, save_triage, split_reviews
from lm4f.retrieval import build_index, save_settings
from lm4f.saved_models import save_model
from lm4f.train import save_assistant

CASES = ("reviews", "images", "movies", "assistant", "generate")


# ---------------------------------------------------------------------------------------------
# Small real models, saved in a temporary models folder
# ---------------------------------------------------------------------------------------------
def _save_reviews(root):
    frame, _ = clean_reviews(data.clothing_reviews())
    splits = split_reviews(frame, seed=0)
    train = splits["train"].iloc[:2000]
    classifier = TfidfClassifier(max_features=20_000).fit(train["text"], train[LABEL])
    classifier.tune_threshold(splits["validation"]["text"][:1000], splits["validation"][LABEL][:1000])
    accuracy = float((classifier.predict(splits["test"]["text"][:500]) == splits["test"][LABEL][:500]).mean())
    retriever = ReviewRetriever(load_minilm(max_seq_length=128), frame[frame["Clothing ID"] == 1078].head(40))
    return save_model("reviews", lambda folder: save_triage(folder, classifier, retriever), root=root,
                      metrics={"accuracy": accuracy}, data={"reviews": data.REVIEWS_FILES})


def _save_images(root):
    images, labels = data.fashion_mnist("test")
    lm4f.seed_everything(0)
    model = vision.softmax_regression()
    vision.train_classifier(model, vision.to_tensor(images[:3000]), torch.from_numpy(labels[:3000]), epochs=1, lr=1e-2)
    accuracy = vision.classifier_accuracy(model, vision.to_tensor(images[3000:4000]),
                                          torch.from_numpy(labels[3000:4000]))
    return save_model("images", lambda folder: vision.save_classifier(folder, model), root=root,
                      metrics={"accuracy": accuracy}, data=data.FASHION_MNIST_FILES)


def _save_movies(root):
    movielens = data.movielens_100k()
    ratings, items = movielens["ratings"], movielens["items"]
    sequences = rs.user_sequences(ratings[ratings.user_id <= 200])
    model, _, _ = rs.train_sasrec(sequences, dim=16, layers=1, heads=1, max_len=20, epochs=2, batch_size=50)
    recommender = rs.Recommender(model.next_item_scores, histories=sequences,
                                 popularity=rs.popularity_scores(sequences),
                                 titles=dict(zip(items.movie_id.tolist(), items.movie_title.tolist())),
                                 known_users=range(1, 944))
    return save_model("movies", lambda folder: rs.save_recommender(folder, model, recommender), root=root,
                      metrics={"HR@10": None}, data=data.MOVIELENS_FILES)


def _save_assistant(root, scratch):
    passages = [p for p in shop.passages() if not p.id.startswith("product-") or p.id.split("-")[1] in ("1078",)]
    index = build_index(passages, scratch / "index", load_minilm())
    save_settings(index, {"hybrid": {"method": "weighted", "weight": 0.5},
                          "handoff": {"min_dense": 0.35, "min_bm25": 2.5},
                          "extractive": {"item_lexical": 2.0, "part_prior": 1.0}})
    return save_assistant(index, root=root, metrics={"correctness": None})


def _save_generate(root):
    from lm4f import generative

    torch.manual_seed(0)
    return generative.save_generator(generative.Generator(width=8), root=root, metrics={"frechet_distance": None})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    scratch = tmp_path_factory.mktemp("scratch")
    return {"reviews": _save_reviews(root), "images": _save_images(root), "movies": _save_movies(root),
            "assistant": _save_assistant(root, scratch), "generate": _save_generate(root)}


@pytest.fixture(scope="module")
def clients(models):
    """One TestClient per case, each app built by the serve command line from its saved version, ready."""
    opened = {}
    for case in CASES:
        app, _ = serve.app_from_argv([case, "--model", str(models[case].folder.parent)])  # the case folder
        client = TestClient(app)
        client.__enter__()  # runs the app's lifespan: the warm-up thread
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        opened[case] = client
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


# what each case is asked: a good request, a bad one (status, fragment of the detail), the route for big bodies
GOOD = {
    "reviews": ("/classify", {"text": "Lovely dress, fits perfectly and the fabric is soft."}),
    "images": ("/predict", {"pixels": [[0] * 28] * 28}),
    "movies": ("/recommend", {"user_id": 7, "k": 3}),
    "assistant": ("/ask", {"question": "Do you accept PayPal?"}),
    "generate": ("/generate", {"class": "Bag", "n": 1}),
}
BAD = {
    "reviews": ("/classify", {"text": 42}, 422, "text: Input should be a valid string. Send JSON like"),
    "images": ("/predict", {"pixels": [[0] * 20] * 20}, 422, "pixels: pixels must be 28 rows of 28 values"),
    "movies": ("/recommend", {"user_id": 7, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    "assistant": ("/ask", {"question": 42}, 422, "question: Input should be a valid string. Send JSON like"),
    "generate": ("/generate", {"class": "Spaceship"}, 422, "class: unknown class 'Spaceship'; use one of"),
}
ROUTES = {"reviews": {"/classify", "/ask"}, "images": {"/predict", "/predict/png", "/predict/image"},
          "movies": {"/recommend", "/popular"}, "assistant": {"/ask", "/v1/chat/completions", "/v1/models"},
          "generate": {"/generate"}}
LIMITS = {"reviews": 64 * 1024, "images": 256 * 1024, "movies": 64 * 1024, "assistant": 64 * 1024,
          "generate": 4 * 1024}


def _metric(client, name: str, **labels) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ---------------------------------------------------------------------------------------------
# What every app has
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_health_ready_and_docs(clients, models, case):
    client = clients[case]
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    about = ready.json()["model"]
    assert ready.json()["status"] == "ready" and about["case"] == case and about["version"] == "v1"
    assert about["metrics"] == models[case].metadata["metrics"] and about["created_at"].endswith("Z")
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths >= ROUTES[case] | {"/health", "/ready", "/metrics"}
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("case", CASES)
def test_metrics_count_requests_errors_and_latency(clients, case):
    client = clients[case]
    route, body = GOOD[case]
    bad_route, bad_body, bad_status, _ = BAD[case]
    before = _metric(client, "lm4f_http_requests_total", route=route, method="POST", status="200")
    latency_before = _metric(client, "lm4f_http_request_duration_seconds_count", route=route, method="POST")
    errors_before = _metric(client, "lm4f_http_errors_total", route=bad_route, status=str(bad_status))
    assert client.post(route, json=body).status_code == 200
    assert client.post(route, json=body).status_code == 200
    assert client.post(bad_route, json=bad_body).status_code == bad_status
    assert _metric(client, "lm4f_http_requests_total", route=route, method="POST", status="200") == before + 2
    timed = latency_before + 2 + (bad_route == route)  # the histogram times every answer, errors included
    assert _metric(client, "lm4f_http_request_duration_seconds_count", route=route, method="POST") == timed
    assert _metric(client, "lm4f_http_errors_total", route=bad_route, status=str(bad_status)) == errors_before + 1
    client.get("/no/such/path/12345")  # a scanner's paths do not become labels
    assert "/no/such/path/12345" not in client.get("/metrics").text


@pytest.mark.parametrize("case", CASES)
def test_one_json_log_line_per_request_without_body_query_or_client(clients, case, caplog):
    client = clients[case]
    route, body = GOOD[case]
    marker = "jane.doe@example.com"
    for field in ("text", "question"):  # words a customer typed must not reach the log
        if field in body:
            body = {**body, field: f"{body[field]} {marker}"}
    caplog.set_level(logging.INFO, logger="lm4f.access")
    response = client.post(f"{route}?email={marker}", json=body, headers={"X-Request-ID": "req-42",
                                                                          "User-Agent": "MarkerAgent/1.0"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-42"
    records = [r for r in caplog.records if r.name == "lm4f.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = json.loads(line)
    assert set(entry) == {"ts", "level", "logger", "event", "request_id", "method", "route", "status", "duration_ms",
                          "bytes_in", "bytes_out"}
    assert entry["request_id"] == "req-42" and entry["route"] == route and entry["status"] == 200
    assert entry["bytes_in"] == len(response.request.content) and entry["bytes_out"] == len(response.content)
    assert marker not in line and "MarkerAgent" not in line and "testclient" not in line
    caplog.clear()
    client.get("/health", headers={"X-Request-ID": "not a token!"})  # an unsafe id is replaced by a fresh one
    (record,) = [r for r in caplog.records if r.name == "lm4f.access"]
    assert record.fields["request_id"] != "not a token!" and len(record.fields["request_id"]) == 32


@pytest.mark.parametrize("case", CASES)
def test_an_oversized_body_gets_413_before_it_is_parsed(clients, case):
    client = clients[case]
    route, body = GOOD[case]
    limit = LIMITS[case]
    broken = b"{" + b"x" * (limit + 10)  # not JSON: parsed, it would be a 422
    declared = client.post(route, content=broken, headers={"content-type": "application/json"})
    assert declared.status_code == 413, declared.text
    assert declared.json()["code"] == "request_too_large" and f"at most {limit:,} bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the bytes that arrive are counted
        for _ in range(limit // 1000 + 2):
            yield b"y" * 1000

    streamed = client.post(route, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and f"more than {limit:,} bytes" in streamed.json()["detail"]
    assert client.post(route, json=body).status_code == 200  # and it keeps serving


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_error_schema_with_a_readable_detail(clients, case):
    client = clients[case]
    route, body, status, fragment = BAD[case]
    response = client.post(route, json=body)
    assert response.status_code == status and fragment in response.json()["detail"]
    assert response.json()["code"] == "invalid_request" and response.json()["errors"][0]["loc"][0] == "body"
    malformed = client.post(route, content=b'{"unterminated', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"].startswith("the body is not valid JSON")
    unknown = client.post("/predict-everything", json={})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    assert all(path in unknown.json()["detail"] for path in ROUTES[case] if not path.startswith("/v1/models"))


def test_each_case_answers_from_its_saved_model(clients, models):
    classify = clients["reviews"].post("/classify", json={"text": "Terrible quality, it fell apart, I returned it."})
    assert classify.json()["recommended"] is False
    assert classify.json()["threshold"] == models["reviews"].config["threshold"]
    ask = clients["reviews"].post("/ask", json={"question": "Does it run small?", "clothing_id": 1078, "k": 2})
    assert [a["clothing_id"] for a in ask.json()["answers"]] == [1078, 1078]
    image = data.fashion_mnist("test")[0][5000]
    predicted = clients["images"].post("/predict/png", files={"file": ("x.png", vision.encode_png(image), "image/png")})
    assert predicted.status_code == 200 and predicted.json()["label"] in vision.CLASSES
    movies = clients["movies"].post("/recommend", json={"user_id": 900, "k": 3}).json()
    assert movies["strategy"] == "popularity" and len(movies["items"]) == 3  # 900 is known but has no history
    answer = clients["assistant"].post("/ask", json={"question": "Do you accept PayPal?"}).json()
    assert "PayPal" in answer["answer"] and answer["citations"][0]["id"] == "payment-01"


# ---------------------------------------------------------------------------------------------
# Images: dimensions are read from the PNG header before decoding
# ---------------------------------------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares width x height greyscale pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (len(payload).to_bytes(4, "big") + kind + payload
                + zlib.crc32(kind + payload).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # the first 16 rows; the rest would be more zeros
    return vision.PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (20_000, 20_000), (28, 100_000)])
def test_a_decompression_bomb_is_refused_at_once(clients, width, height):
    client = clients["images"]
    bomb = _png_declaring(width, height)
    assert len(bomb) < 4_000 and vision.png_dimensions(bomb) == (width, height)
    started = time.perf_counter()
    response = client.post("/predict/png", files={"file": ("bomb.png", bomb, "image/png")})
    seconds = time.perf_counter() - started
    assert response.status_code == 422 and response.json()["code"] == "wrong_image_size"
    assert response.json()["detail"].startswith(f"the image is {width}x{height} pixels; the model takes 28x28")
    assert seconds < 1.0  # decoding 10^10 pixels would take minutes and 10 GB
    ok = client.post("/predict/png", files={"file": ("ok.png", vision.encode_png(np.zeros((28, 28))), "image/png")})
    assert ok.status_code == 200


def test_a_huge_pixel_array_is_refused_by_size_not_parsed(clients):
    client = clients["images"]
    huge = json.dumps({"pixels": [[255] * 1000] * 1000}).encode()  # 4 MB of JSON
    started = time.perf_counter()
    response = client.post("/predict", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and time.perf_counter() - started < 1.0


# ---------------------------------------------------------------------------------------------
# The serve command line
# ---------------------------------------------------------------------------------------------
MAIN_FILES = {"reviews": "classifier.joblib", "images": "model.pt2", "movies": "sasrec.safetensors",
              "assistant": "index/embeddings.npy", "generate": "weights.pt"}


@pytest.mark.parametrize("case", CASES)
def test_a_corrupt_or_missing_model_file_stops_the_command_and_names_it(models, case, tmp_path, capsys):
    copy = tmp_path / "models" / case / "v1"
    shutil.copytree(models[case].folder, copy)
    target = copy / MAIN_FILES[case]
    target.write_bytes(target.read_bytes()[:100])
    assert serve.main([case, "--model", str(copy)]) == 1
    error = capsys.readouterr().err
    assert f"{target} is corrupt or truncated" in error
    assert models[case].metadata["rebuild"] in error and f"python -m lm4f.train {case}" in error
    target.unlink()
    assert serve.main([case, "--model", str(copy.parent)]) == 1  # the case folder: its newest version
    assert f"{target} is missing" in capsys.readouterr().err


def test_settings_come_from_flags_or_environment(models, monkeypatch, capsys):
    monkeypatch.setenv("LM4F_CASE", "images")
    monkeypatch.setenv("LM4F_MODEL", str(models["images"].folder))
    for name, value in {"LM4F_HOST": "0.0.0.0", "LM4F_PORT": "9123", "LM4F_WORKERS": "3",
                        "LM4F_MAX_BODY_BYTES": "4096", "LM4F_TORCH_THREADS": "2", "LM4F_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    case, args = serve.parse([])
    assert (case, args.model, args.host, args.port, args.workers, args.max_body_bytes, args.torch_threads,
            args.log_level) == ("images", str(models["images"].folder), "0.0.0.0", 9123, 3, 4096, 2, "warning")
    case, args = serve.parse(["movies", "--port", "8001", "--workers", "1"])  # flags win over the environment
    assert (case, args.port, args.workers, args.host) == ("movies", 8001, 1, "0.0.0.0")
    app, _ = serve.app_from_argv([])
    with TestClient(app) as client:  # LM4F_MAX_BODY_BYTES reached the app
        response = client.post("/predict", json={"pixels": [[100] * 28] * 28, "padding": "x" * 5000})
        assert response.status_code == 413 and "at most 4,096 bytes" in response.json()["detail"]
    monkeypatch.setenv("LM4F_PORT", "http")
    with pytest.raises(SystemExit) as stopped:
        serve.parse([])
    assert stopped.value.code == 2 and "LM4F_PORT" in capsys.readouterr().err
    monkeypatch.setenv("LM4F_PORT", "8000")
    with pytest.raises(SystemExit):
        serve.parse(["--workers", "0"])
    assert "--workers must be a whole number from 1 to 64, got '0'" in capsys.readouterr().err
    monkeypatch.delenv("LM4F_CASE")
    with pytest.raises(serve.UsageError, match="unknown case 'films'"):
        serve.parse(["films"])
    assert serve.main([]) == 2
    usage = capsys.readouterr().err
    assert all(case in usage for case in CASES)
    assert serve.main(["--help"]) == 0 and "python -m lm4f.serve CASE" in capsys.readouterr().out


def test_the_review_scores_setting_comes_from_flag_or_environment(models, monkeypatch, capsys):
    text = {"text": "Terrible quality, it fell apart, I returned it."}
    monkeypatch.setenv("LM4F_SCORES", "label")
    app, args = serve.app_from_argv(["reviews", "--model", str(models["reviews"].folder)])
    with TestClient(app) as client:
        answer = client.post("/classify", json=text).json()
        assert args.scores == "label" and "probability" not in answer and answer["recommended"] is False
        assert client.get("/health").json()["scores"] == "label"
    app, args = serve.app_from_argv(["reviews", "--model", str(models["reviews"].folder), "--scores", "rounded"])
    with TestClient(app) as client:  # the flag wins over the environment
        probability = client.post("/classify", json=text).json()["probability"]
        assert args.scores == "rounded" and probability == round(probability, 1)
    monkeypatch.setenv("LM4F_SCORES", "exact")
    with pytest.raises(SystemExit):
        serve.parse(["reviews"])
    assert "--scores must be one of full, rounded, label, got 'exact' (from --scores or LM4F_SCORES)" \
        in capsys.readouterr().err


def test_the_command_serves_over_loopback_with_two_workers(models, tmp_path):
    port = lm4f.serving.free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LM4F_MODEL": str(models["images"].folder)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "lm4f.serve", "images", "--port", str(port), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server did not become ready within 120 s"
            time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(20):  # new connections: both workers get some
                assert httpx.post(url + "/predict", json={"pixels": [[0] * 28] * 28}, timeout=10).status_code == 200
            assert client.post("/predict", json={"pixels": []}).status_code == 422
            families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
            served = sum(s.value for s in families["lm4f_http_requests"].samples
                         if s.name == "lm4f_http_requests_total" and s.labels["route"] == "/predict"
                         and s.labels["status"] == "200")
            assert served == 20  # summed over both workers
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request" and line["route"] == "/predict"]
    assert len(requests) == 21 and {line["status"] for line in requests} == {200, 422}
    assert "[[0" not in stdout  # no body in the log
    assert "with 2 worker(s)" in stderr


def test_several_workers_listen_without_nagles_delay():
    """uvicorn binds the workers' socket with protocol 0, so asyncio leaves Nagle's algorithm on for it;
    the serve command's config sets TCP_NODELAY on the listening socket, which accepted sockets inherit."""
    import socket

    config = serve.NoDelayConfig("lm4f.serve:app_from_environment", factory=True, host="127.0.0.1",
                                 port=lm4f.serving.free_port(), workers=2)
    sock = config.bind_socket()
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        sock.listen()  # what each worker's server does with it
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        accepted.close()
        client.close()
    finally:
        sock.close()
