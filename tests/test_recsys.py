"""Splits and metrics of lm4f.recsys on tiny hand-made data (and the real fold layout)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import lm4f.recsys as rs


def tiny_ratings():
    # 10 ratings in "u.data" order: user, movie, rating, timestamp
    rows = [(1, 1, 5, 30), (1, 2, 3, 10), (2, 1, 4, 5), (1, 3, 1, 20), (2, 3, 2, 1),
            (3, 2, 5, 7), (3, 4, 4, 7), (2, 4, 3, 9), (3, 1, 1, 2), (1, 4, 2, 40)]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])


def test_grouplens_folds_are_contiguous_disjoint_blocks():
    ratings = tiny_ratings()
    folds = list(rs.grouplens_folds(ratings, folds=5))
    assert [fold for fold, _, _ in folds] == [1, 2, 3, 4, 5]
    seen_tests = []
    for fold, train, test in folds:
        assert len(test) == 2 and len(train) == 8
        expected = ratings.iloc[2 * (fold - 1): 2 * fold].reset_index(drop=True)
        pd.testing.assert_frame_equal(test, expected)   # mku.sh: block i of the file order
        merged = pd.concat([train, test]).sort_values(["user_id", "movie_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(merged, ratings.sort_values(["user_id", "movie_id"]).reset_index(drop=True))
        seen_tests += list(map(tuple, test.to_numpy()))
    assert len(set(seen_tests)) == len(ratings)


def test_grouplens_folds_on_real_data_match_u1_test():
    from lm4f.data import movielens_100k

    ratings = movielens_100k()["ratings"]
    _, train, test = next(rs.grouplens_folds(ratings))
    assert len(train) == 80_000 and len(test) == 20_000
    assert test["user_id"].nunique() == 459        # as in GroupLens' u1.test
    user1 = sorted(test.loc[test.user_id == 1, "movie_id"])[:6]
    assert user1 == [6, 10, 12, 14, 17, 20]         # the first lines of u1.test


def test_user_sequences_follow_time_then_file_order():
    sequences = rs.user_sequences(tiny_ratings())
    assert sequences[1] == [2, 3, 1, 4]
    assert sequences[2] == [3, 1, 4]
    assert sequences[3] == [1, 2, 4]                # movies 2 and 4 tie at t=7: file order


def test_leave_one_out_holds_out_last_two():
    split = rs.leave_one_out({1: [2, 3, 1, 4], 2: [3, 1, 4], 9: [7, 8]})
    assert split.train == {1: [2, 3], 2: [3], 9: [7, 8]}
    assert split.valid == {1: 1, 2: 1}
    assert split.test == {1: 4, 2: 4}


def test_rmse_by_hand_and_errors():
    assert rs.rmse([3, 4], [3, 4]) == 0.0
    assert rs.rmse([1, 5], [2, 3]) == pytest.approx(math.sqrt((1 + 4) / 2))
    with pytest.raises(ValueError, match="shape"):
        rs.rmse([1, 2, 3], [1, 2])


def test_rank_among_unseen_removes_seen_and_counts_ties_against_target():
    scores = np.array([99.0, 0.1, 0.9, 0.5, 0.7, 0.3])   # index 0 is padding, never ranked
    assert rs.rank_among_unseen(scores, target=3, seen=[]) == 2       # 2 and 4 beat 3
    assert rs.rank_among_unseen(scores, target=3, seen=[2]) == 1      # 2 was seen: removed
    assert rs.rank_among_unseen(scores, target=2, seen=[2, 4]) == 0   # the target itself is never removed
    flat = np.ones(6)
    assert rs.rank_among_unseen(flat, target=1, seen=[]) == 4         # all tied: worst rank


def test_hit_rate_and_ndcg_by_hand():
    ranks = [0, 1, 9, 10, 500]
    assert rs.hit_rate_at_k(ranks, 10) == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert rs.ndcg_at_k(ranks, 10) == pytest.approx(expected)
    assert rs.ndcg_at_k([0, 0], 10) == 1.0


def test_evaluate_ranking_uses_history_and_full_ranking():
    split = rs.leave_one_out({1: [1, 2, 3], 2: [2, 3, 4]})
    scores = np.array([0, 5.0, 4.0, 3.0, 2.0, 1.0])   # item 1 best ... item 5 worst

    result = rs.evaluate_ranking(lambda user, history: scores, split, "test", k=1)
    # user 1: history [1, 2] removed, target 3 ranks first; user 2: history [2, 3] removed, 1 beats 4
    assert result == {"users": 2, "HR@1": 0.5, "NDCG@1": 0.5}


def test_biased_baseline_beats_global_mean_on_a_pattern():
    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 30, 2000), rng.integers(1, 40, 2000)
    ratings = np.clip(np.round(3 + 0.05 * (users - 15) - 0.04 * (items - 20) + rng.normal(0, 0.3, 2000)), 1, 5)
    frame = pd.DataFrame({"user_id": users, "movie_id": items, "rating": ratings})
    predict = rs.biased_baseline(frame.iloc[:1500])
    test = frame.iloc[1500:]
    assert rs.rmse(predict(test.user_id, test.movie_id), test.rating) < rs.rmse(
        np.full(len(test), frame.rating.iloc[:1500].mean()), test.rating) - 0.1


def low_rank_ratings() -> pd.DataFrame:
    """3,000 ratings of 60 movies by 40 users from a rank-2 matrix around 3, clipped to 1..5."""
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(41, 2)), rng.normal(size=(61, 2))
    users, items = rng.integers(1, 41, 3000), rng.integers(1, 61, 3000)
    ratings = np.clip(3 + (p[users] * q[items]).sum(1), 1, 5)
    return pd.DataFrame({"user_id": users, "movie_id": items, "rating": ratings})


def test_mf_learns_a_low_rank_matrix():
    frame = low_rank_ratings()
    model, _ = rs.train_mf(frame.iloc[:2500], n_users=41, n_items=61, dim=4, epochs=30, lr=0.03,
                           reg=0.001, batch_size=256)
    test = frame.iloc[2500:]
    assert rs.rmse(rs.predict_mf(model, test.user_id, test.movie_id), test.rating) < 0.35


def test_sasrec_learns_a_deterministic_order_and_rejects_long_input():
    import torch

    # every user walks 1 -> 2 -> 3 -> ... : the next item is always the successor
    sequences = {user: list(range(1 + user % 5, 12 + user % 5)) for user in range(1, 41)}
    model, _, losses = rs.train_sasrec(sequences, dim=16, layers=1, heads=1, max_len=8, epochs=25,
                                       lr=0.01, batch_size=20, dropout=0.0, n_items=20)
    assert losses[-1] < losses[0] / 2
    assert int(np.argmax(model.next_item_scores([4, 5, 6]))) == 7
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_pad_left():
    assert rs.pad_left([[1, 2, 3], [], [7]], 2).tolist() == [[2, 3], [0, 0], [0, 7]]


def test_svdpp_implicit_matrix_and_training():
    matrix = rs.implicit_matrix([1, 1, 1, 1, 2], [3, 4, 5, 6, 3], n_users=3, n_items=7).to_dense()
    assert torch.allclose(matrix[1, 3:7], torch.full((4,), 0.5))        # 1/sqrt(4 rated movies)
    assert matrix[2, 3] == 1.0 and matrix[0].sum() == 0 and matrix[1, :3].sum() == 0
    frame = low_rank_ratings()
    model, _ = rs.train_mf(frame.iloc[:2500], n_users=41, n_items=61, dim=4, epochs=30, lr=0.03,
                           reg=0.001, batch_size=256, implicit_reg=1.0, cosine=True)
    assert model.implicit_factors is not None
    test = frame.iloc[2500:]
    assert rs.rmse(rs.predict_mf(model, test.user_id, test.movie_id), test.rating) < 0.35
