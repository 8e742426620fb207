"""The recommender API (lm4f.apps.recommend) under a real uvicorn server, driven by httpx."""

import httpx
import numpy as np
import pytest

import lm4f.recsys as rs
import lm4f.serving
from lm4f.apps.recommend import create_app
from lm4f.data import movielens_100k


@pytest.fixture(scope="module")
def server():
    movielens = movielens_100k()
    ratings, items = movielens["ratings"], movielens["items"]
    sequences = rs.user_sequences(ratings[ratings.user_id <= 200])      # users 1..200 have behaviour
    model, _, _ = rs.train_sasrec(sequences, dim=16, layers=1, heads=1, max_len=20, epochs=2, batch_size=50)
    recommender = rs.Recommender(model.next_item_scores, histories=sequences,
                                 popularity=rs.popularity_scores(sequences),
                                 titles=dict(zip(items.movie_id, items.movie_title)),
                                 known_users=range(1, 944))               # 201..943: registered, no behaviour
    running = lm4f.serving.start(create_app(recommender))
    client = httpx.Client(base_url=running.url, timeout=10)
    yield client, recommender, sequences
    client.close()
    running.stop()


def test_health(server):
    client, _, _ = server
    assert client.get("/health").json()["status"] == "ok"


def test_known_user_gets_unseen_top_k(server):
    client, _, sequences = server
    reply = client.post("/recommend", json={"user_id": 7, "k": 10})
    assert reply.status_code == 200
    body = reply.json()
    assert body["strategy"] == "transformer" and body["user_id"] == 7
    ids = [m["movie_id"] for m in body["items"]]
    assert len(ids) == 10 == len(set(ids))
    assert not set(ids) & set(sequences[7])
    scores = [m["score"] for m in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(m["title"], str) and m["title"] for m in body["items"])


def test_ad_hoc_history_excludes_history(server):
    client, _, _ = server
    history = [50, 172, 181]
    body = client.post("/recommend", json={"history": history, "k": 5}).json()
    assert body["strategy"] == "transformer" and body["user_id"] is None
    ids = [m["movie_id"] for m in body["items"]]
    assert len(ids) == 5 and not set(ids) & set(history)


def test_cold_start_user_falls_back_to_popularity(server):
    client, recommender, _ = server
    body = client.post("/recommend", json={"user_id": 900, "k": 3}).json()
    assert body["strategy"] == "popularity"
    expected = list(np.argsort(-recommender.popularity, kind="stable")[:3])
    assert [m["movie_id"] for m in body["items"]] == expected
    assert client.get("/popular", params={"k": 3}).json()["items"] == body["items"]


@pytest.mark.parametrize("body, status, words", [
    ({"user_id": 5000}, 404, "Unknown user_id 5000"),
    ({"history": []}, 422, "history"),
    ({"history": [1, 99999]}, 422, "Unknown movie ids in history: [99999]"),
    ({"user_id": 1, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"user_id": 1, "k": 1000}, 422, "k: Input should be less than or equal to 100"),
    ({"user_id": 1, "k": "10"}, 422, "k: Input should be a valid integer"),
    ({"user_id": 1, "top": 5}, 422, "top: Extra inputs are not permitted"),
    ({}, 422, "exactly one"),
    ({"user_id": 1, "history": [1]}, 422, "exactly one"),
])
def test_bad_requests_get_clear_4xx(server, body, status, words):
    client, _, _ = server
    reply = client.post("/recommend", json=body)
    assert reply.status_code == status
    assert words in reply.json()["detail"]


def test_bad_k_on_popular_and_wrong_type(server):
    client, _, _ = server
    negative = client.get("/popular", params={"k": -1})
    assert negative.status_code == 422 and negative.json()["detail"].startswith("k: Input should be greater than")
    wrong = client.post("/recommend", json={"user_id": "abc"})
    assert wrong.status_code == 422 and "user_id: Input should be a valid integer" in wrong.json()["detail"]
    assert wrong.json()["code"] == "invalid_request" and wrong.json()["errors"][0]["loc"] == ["body", "user_id"]


def test_latency_is_measured(server):
    client, _, _ = server
    stats = lm4f.serving.measure_latency(lambda: client.post("/recommend", json={"user_id": 3, "k": 10}), requests=20)
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] < 2000
