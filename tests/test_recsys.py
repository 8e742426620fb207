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


def test_evaluate_ranking_can_leave_the_validation_item_out_of_the_input():
    split = rs.leave_one_out({1: [1, 2, 3, 4], 2: [2, 3, 4, 5]})
    inputs = {}

    def score_fn(user, history):
        inputs[user] = list(history)
        return np.array([0, 5.0, 4.0, 3.0, 2.0, 1.0])

    rs.evaluate_ranking(score_fn, split, "test", k=1, with_valid_item=False)
    assert inputs == {1: [1, 2], 2: [2, 3]}   # training history only ...
    # ... but the validation item is still out of the ranking: user 1's target 4 has nothing above it
    assert rs.evaluate_ranking(score_fn, split, "test", k=1, with_valid_item=False)["HR@1"] == 0.5
    rs.evaluate_ranking(score_fn, split, "test", k=1)
    assert inputs == {1: [1, 2, 3], 2: [2, 3, 4]}


def test_rank_users_agrees_with_rank_among_unseen_and_lists_unseen_items_best_first():
    rng = np.random.default_rng(0)
    sequences = {user: list(rng.choice(np.arange(1, 30), size=rng.integers(3, 12), replace=False))
                 for user in range(1, 25)}
    split = rs.leave_one_out(sequences)
    table = rng.normal(size=(25, 30))
    table[3, :] = 1.0                                              # user 3: every item tied
    for which in ("valid", "test"):
        ranking = rs.rank_users(lambda users, histories: table[users], split, which, k=5, batch_size=7)
        targets = split.test if which == "test" else split.valid
        for user, rank, top in zip(ranking.users, ranking.ranks, ranking.top):
            seen = split.train[user] + ([split.valid[user]] if which == "test" else [])
            assert rank == rs.rank_among_unseen(table[user], targets[user], seen)
            assert not set(top) & set(seen) and 0 not in top
            if user != 3:
                assert list(top) == [int(i) for i in np.argsort(-table[user]) if i != 0 and i not in seen][:5]
        assert ranking.summary(5) == {"users": len(targets), "HR@5": rs.hit_rate_at_k(ranking.ranks, 5),
                                      "NDCG@5": rs.ndcg_at_k(ranking.ranks, 5)}
        assert ranking.hits(5).mean() == rs.hit_rate_at_k(ranking.ranks, 5)
    assert ranking.ranks[list(ranking.users).index(3)] == 29 - len(split.train[3]) - 2  # ties count against


@pytest.mark.parametrize("stride", [5, 3, 1])
def test_training_windows_make_every_later_item_a_target_exactly_once(stride):
    sequences = [list(range(100 * n + 1, 100 * n + 1 + length)) for n, length in enumerate([1, 2, 5, 6, 7, 13, 30])]
    inputs, targets = rs.training_windows(sequences, max_len=5, stride=stride)
    assert inputs.shape == targets.shape and inputs.shape[1] == 5
    scored = targets[targets > 0].tolist()
    assert sorted(scored) == sorted(item for items in sequences for item in items[1:])   # each once
    for window, window_targets in zip(inputs, targets):
        for position in np.flatnonzero(window_targets):
            item = window_targets[position]
            assert window[position] == item - 1                      # the input there is the item before it
            context = window[:position + 1]
            assert (context > 0).sum() >= min(5 - stride + 1, item % 100 - 1)  # enough history, or all of it
    with pytest.raises(ValueError, match="stride"):
        rs.training_windows(sequences, max_len=5, stride=6)


def test_coverage_and_popularity_percentile():
    assert rs.catalogue_coverage(np.array([[1, 2], [2, 3]]), n_items=11) == 0.3
    popularity = np.array([-1.0, 5, 1, 1, 9])                      # item 0 is padding
    assert rs.popularity_percentile([4, 1, 2, 3], popularity).tolist() == [100.0, pytest.approx(200 / 3), 0.0 + 50 / 3,
                                                                          0.0 + 50 / 3]
    assert np.isnan(rs.popularity_percentile([0], popularity)[0])
    assert rs.popularity_percentile([1, 2], np.array([-1.0, 3, 3])).tolist() == [50.0, 50.0]


def test_cooccurrence_cosine_divides_by_both_audiences():
    cosine = rs.cooccurrence_cosine({1: [1, 2], 2: [1, 2, 3], 3: [3]}, n_items=5)
    assert cosine[1, 2] == cosine[2, 1] == pytest.approx(1.0)       # always watched together
    assert cosine[1, 3] == pytest.approx(0.5)                       # 1 co-watcher / sqrt(2 * 2)
    assert cosine[4].sum() == 0 and np.diag(cosine).sum() == 0 and cosine[0].sum() == 0


def test_shuffled_sequences_keep_each_bag_and_lose_the_order():
    sequences = {1: list(range(1, 41)), 2: [5, 6]}
    shuffled = rs.shuffled_sequences(sequences, seed=0)
    assert sorted(shuffled[1]) == sequences[1] and sorted(shuffled[2]) == [5, 6]
    assert shuffled[1] != sequences[1] and shuffled == rs.shuffled_sequences(sequences, seed=0)


def test_training_keeps_the_weights_of_the_best_validation_epoch():
    sequences = {user: [(user + step) % 30 + 1 for step in range(12)] for user in range(1, 21)}
    snapshots, scores = [], iter([0.1, 0.5, 0.2])

    def validate(model):
        snapshots.append(model.user_factors.weight.detach().clone())
        return next(scores)

    model, seconds = rs.train_bpr(sequences, n_users=21, n_items=31, dim=4, epochs=3, validate=validate)
    assert len(snapshots) == 3 and seconds > 0
    assert torch.equal(model.user_factors.weight, snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])

    snapshots, scores = [], iter([0.3, 0.2])

    def validate_sasrec(model):
        snapshots.append(model.item_embedding.weight.detach().clone())
        return next(scores)

    model, _, losses = rs.train_sasrec(sequences, dim=8, layers=1, heads=1, max_len=6, epochs=2, n_items=31,
                                       validate=validate_sasrec)
    assert len(losses) == 2 and torch.equal(model.item_embedding.weight, snapshots[0])
