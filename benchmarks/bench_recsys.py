"""Recommender (case study 6.4) at the CI size: RMSE on u1, HR@10 / NDCG@10, training time, API latency."""

import httpx
import torch

import lm4f
import lm4f.recsys as rs
import lm4f.serving
from lm4f.apps.recommend import create_app
from lm4f.data import movielens_100k


def run():
    lm4f.seed_everything(0)
    device = str(lm4f.choose_device())
    movielens = movielens_100k()
    ratings, items = movielens["ratings"], movielens["items"]
    figures = []

    _, train, test = next(rs.grouplens_folds(ratings))
    # the chapter's setting: SVD++-style MF, implicit_reg chosen on a validation split of u1.base
    mf, mf_seconds = rs.train_mf(train, dim=64, epochs=lm4f.pick(ci=15, full=30), reg=0.1, cosine=True,
                                 implicit_reg=100.0)
    figures += [
        {"metric": "MF RMSE (u1.test, mku.sh split)",
         "value": rs.rmse(rs.predict_mf(mf, test.user_id, test.movie_id), test.rating), "unit": "rating points"},
        {"metric": "MF training time (u1.base)", "value": mf_seconds, "unit": "s", "device": "cpu"},
    ]

    sequences = rs.user_sequences(ratings)
    split = rs.leave_one_out(sequences)
    sasrec, sasrec_seconds, _ = rs.train_sasrec(split.train, max_len=lm4f.pick(ci=50, full=200),
                                                epochs=lm4f.pick(ci=5, full=60))
    result = rs.evaluate_ranking(lambda user, history: sasrec.next_item_scores(history), split, "test")
    figures += [
        {"metric": "SASRec HR@10 (leave-one-out by time, full ranking)", "value": result["HR@10"],
         "unit": "share of users"},
        {"metric": "SASRec NDCG@10 (leave-one-out by time, full ranking)", "value": result["NDCG@10"],
         "unit": "mean gain"},
        {"metric": "SASRec training time", "value": sasrec_seconds, "unit": "s", "device": "cpu"},
    ]

    recommender = rs.Recommender(sasrec.next_item_scores, sequences, rs.popularity_scores(sequences),
                                 dict(zip(items.movie_id, items.movie_title)))
    with lm4f.serving.start(create_app(recommender)) as server, httpx.Client(base_url=server.url) as client:
        latency = lm4f.serving.measure_latency(lambda: client.post("/recommend", json={"user_id": 42, "k": 10}),
                                               requests=200)
    figures += [
        {"metric": "API latency p50 (POST /recommend, localhost)", "value": latency["p50_ms"], "unit": "ms",
         "device": device},
        {"metric": "API latency p95 (POST /recommend, localhost)", "value": latency["p95_ms"], "unit": "ms",
         "device": device},
    ]
    for figure in figures:
        figure["torch_threads"] = torch.get_num_threads()
    return figures
