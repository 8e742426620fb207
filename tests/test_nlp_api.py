"""Case study 6.2: the review assistant served by a real uvicorn server, queried over HTTP with httpx.

The model is kept small so the test runs in well under a minute: the TF-IDF classifier trained on
4,000 reviews and MiniLM retrieval over 200 reviews of two products.
"""

import httpx
import pytest

import lm4f.data
import lm4f.serving
from lm4f.apps.nlp import MAX_TEXT_CHARS, create_app
from lm4f.nlp import LABEL, ReviewRetriever, TfidfClassifier, clean_reviews, load_minilm, split_reviews

PRODUCTS = (1078, 862)


@pytest.fixture(scope="module")
def reviews():
    frame, _ = clean_reviews(lm4f.data.clothing_reviews())
    return frame, split_reviews(frame, seed=0)


@pytest.fixture(scope="module")
def classifier(reviews):
    _, splits = reviews
    train = splits["train"].iloc[:4000]
    classifier = TfidfClassifier(max_features=20_000).fit(train["text"], train[LABEL])
    classifier.tune_threshold(splits["validation"]["text"], splits["validation"][LABEL])
    return classifier


@pytest.fixture(scope="module")
def server(reviews, classifier):
    frame, _ = reviews
    reviews = frame[frame["Clothing ID"].isin(PRODUCTS)].groupby("Clothing ID").head(100)
    retriever = ReviewRetriever(load_minilm(max_seq_length=128), reviews)
    running = lm4f.serving.start(create_app(classifier, retriever))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client
    running.stop()


def test_health(server):
    body = server.get("/health").json()
    assert body == {"status": "ok", "classify": True, "scores": "full", "ask": True, "reviews_indexed": 200}


def test_classify_separates_clear_reviews(server):
    good = server.post("/classify", json={"text": "Love this dress! Fits perfectly, great quality, "
                                                  "I get compliments every time."})
    bad = server.post("/classify", json={"text": "Very disappointed. Cheap fabric, terrible fit, "
                                                 "looked awful and I returned it."})
    assert good.status_code == bad.status_code == 200
    assert good.json()["recommended"] is True and bad.json()["recommended"] is False
    assert good.json()["probability"] > 0.8 > 0.3 > bad.json()["probability"]
    assert 0.05 <= good.json()["threshold"] <= 0.95


def test_ask_returns_ranked_reviews_of_the_product(server):
    response = server.post("/ask", json={"question": "Does it run small? Should I order a size up?",
                                         "clothing_id": 1078, "k": 5})
    assert response.status_code == 200
    answers = response.json()["answers"]
    assert len(answers) == 5 and all(a["clothing_id"] == 1078 for a in answers)
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
    sizing = ("small", "size", "tight", "fit", "large", "big")
    assert sum(any(word in a["review"].lower() for word in sizing) for a in answers) >= 4
    everywhere = server.post("/ask", json={"question": "Is the fabric see-through?"}).json()["answers"]
    assert len(everywhere) == 3


@pytest.mark.parametrize("path, body, fragment", [
    ("/classify", {"text": 42}, "text: Input should be a valid string"),
    ("/classify", {"text": "   "}, "at least 1 character"),
    ("/classify", {"text": "x" * (MAX_TEXT_CHARS + 1)}, f"at most {MAX_TEXT_CHARS} characters"),
    ("/classify", {"review": "right text, wrong field"}, "text: Field required"),
    ("/classify", [1, 2], "Send JSON like"),
    ("/ask", {"question": "Does it run small?", "k": 0}, "k: Input should be greater than or equal to 1"),
    ("/ask", {"question": "Does it run small?", "k": "3"}, "k: Input should be a valid integer"),
    ("/ask", {"question": "Does it run small?", "clothing_id": 1078, "top": 3}, "Extra inputs"),
])
def test_bad_requests_get_422_with_a_clear_message(server, path, body, fragment):
    response = server.post(path, json=body)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_malformed_json_unknown_product_and_the_server_keeps_serving(server):
    broken = server.post("/classify", content=b'{"text": "unterminated', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]
    unknown = server.post("/ask", json={"question": "Does it run small?", "clothing_id": 999999})
    assert unknown.status_code == 404 and "1078" in unknown.json()["detail"]
    assert server.post("/classify", json={"text": "Nice top"}).status_code == 200


def test_latency_is_measured(server):
    stats = lm4f.serving.measure_latency(lambda: server.post("/classify", json={"text": "Runs small"}),
                                         requests=20, warmup=2)
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] < 2000


def test_scores_setting_rounds_or_hides_the_probability(reviews, classifier):
    """The same review through three servers: full (4 decimals), rounded (1 decimal), label (no probability)."""
    _, splits = reviews
    texts = splits["test"]["text"].iloc[:20].tolist()
    exact = classifier.predict_proba(texts)
    answers = {}
    for scores in ("full", "rounded", "label"):
        with lm4f.serving.start(create_app(classifier, scores=scores)) as running:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                assert client.get("/health").json()["scores"] == scores
                answers[scores] = [client.post("/classify", json={"text": text}).json() for text in texts]
    for i, probability in enumerate(exact):
        full, rounded, label = answers["full"][i], answers["rounded"][i], answers["label"][i]
        assert full["probability"] == pytest.approx(probability, abs=5e-5)
        assert rounded["probability"] == pytest.approx(round(probability, 1), abs=1e-9)
        assert "probability" not in label and set(label) == {"recommended", "threshold"}
        decision = bool(probability >= classifier.threshold)
        assert full["recommended"] is rounded["recommended"] is label["recommended"] is decision
    assert len({a["probability"] for a in answers["full"]}) > len({a["probability"] for a in answers["rounded"]})


def test_an_unknown_scores_setting_is_refused_with_the_choices(classifier):
    with pytest.raises(ValueError, match="scores must be one of full, rounded, label, got 'none'"):
        create_app(classifier, scores="none")
