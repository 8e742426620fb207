"""The recommender case study (6.4): splits, metrics and models shared by the notebook, the API and the tests.

Two tasks on MovieLens-100K, each with its own protocol:

- **rating prediction** (RMSE): GroupLens' five 80/20 folds, built the way their ``mku.sh`` builds
  ``u1.base``/``u1.test`` ... ``u5``: fold i tests on rows ``20000*(i-1) .. 20000*i`` of ``u.data``;
- **next-item recommendation** (HR@10, NDCG@10): leave-one-out by time (each user's last movie is the
  test item, the one before it the validation item), ranked against *all* movies the user has not
  seen (full ranking, no sampled negatives).

Item ids inside the models are the MovieLens ``movie_id`` (1..1682); index 0 is padding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def grouplens_folds(ratings, folds: int = 5):
    """Yield ``(fold, train, test)`` the way GroupLens' ``mku.sh`` cuts ``u.data`` into u1..u5.

    ``ratings`` must be in ``u.data`` row order (``lm4f.data.movielens_100k()`` keeps it). Fold i
    (1-based) tests on the i-th contiguous block of ``len(ratings) // folds`` rows and trains on the
    rest, so the test sets are disjoint and together cover every rating.
    """
    block = len(ratings) // folds
    if block == 0:
        raise ValueError(f"Need at least {folds} ratings to make {folds} folds, got {len(ratings)}.")
    for fold in range(1, folds + 1):
        start, stop = block * (fold - 1), block * fold
        test = ratings.iloc[start:stop]
        train = ratings.drop(ratings.index[start:stop])
        yield fold, train.reset_index(drop=True), test.reset_index(drop=True)


def user_sequences(ratings) -> dict[int, list[int]]:
    """Each user's movie ids in time order (ties broken by the row order of ``u.data``)."""
    ordered = ratings.reset_index().sort_values(["user_id", "timestamp", "index"], kind="stable")
    return {int(user): group.tolist() for user, group in ordered.groupby("user_id")["movie_id"]}


@dataclass
class LeaveOneOut:
    """Leave-one-out by time: ``train[u]`` (all but the last two), ``valid[u]``, ``test[u]``."""

    train: dict[int, list[int]]
    valid: dict[int, int]
    test: dict[int, int]


def leave_one_out(sequences: dict[int, list[int]], min_length: int = 3) -> LeaveOneOut:
    """Hold out each user's last item for test and the one before it for validation.

    Users with fewer than ``min_length`` items keep everything in ``train`` and get no test item.
    """
    train, valid, test = {}, {}, {}
    for user, items in sequences.items():
        if len(items) < min_length:
            train[user] = list(items)
            continue
        train[user] = list(items[:-2])
        valid[user] = items[-2]
        test[user] = items[-1]
    return LeaveOneOut(train, valid, test)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def rmse(predicted, actual) -> float:
    """Root mean squared error between two equal-length sequences of ratings."""
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape:
        raise ValueError(f"rmse: predicted has shape {predicted.shape}, actual {actual.shape}; they must match.")
    if predicted.size == 0:
        raise ValueError("rmse: no ratings to compare.")
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def rank_among_unseen(scores, target: int, seen) -> int:
    """0-based rank of ``target`` among all items, after removing the ``seen`` ones (full ranking).

    ``scores``: 1-D array over item ids (index 0, the padding id, is never ranked). Rank 0 means
    the target scored highest. Ties count against the target (pessimistic), so a model that
    gives every item the same score cannot look good.
    """
    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.ones(len(scores), dtype=bool)
    candidates[0] = False
    seen = [item for item in seen if item != target]
    candidates[np.asarray(seen, dtype=np.int64)] = False
    target_score = scores[target]
    better_or_equal = (scores >= target_score) & candidates
    better_or_equal[target] = False
    return int(better_or_equal.sum())


def hit_rate_at_k(ranks, k: int = 10) -> float:
    """Share of users whose held-out item is in the top k (rank < k)."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k))


def ndcg_at_k(ranks, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per user: 1 / log2(rank + 2) if rank < k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def evaluate_ranking(score_fn, split: LeaveOneOut, which: str = "test", k: int = 10, history_fn=None) -> dict:
    """Full-ranking HR@k and NDCG@k.

    ``score_fn(user, history) -> scores`` over all item ids. For ``which="test"`` the history is
    train + the validation item; for ``"valid"`` it is train only. Items in the history are removed
    from the ranking.
    """
    targets = split.test if which == "test" else split.valid
    ranks = []
    for user, target in targets.items():
        history = split.train[user] + ([split.valid[user]] if which == "test" else [])
        scores = score_fn(user, history)
        ranks.append(rank_among_unseen(scores, target, history))
    return {"users": len(ranks), f"HR@{k}": hit_rate_at_k(ranks, k), f"NDCG@{k}": ndcg_at_k(ranks, k)}


# ---------------------------------------------------------------------------------------------
# Rating prediction: global mean, biased baseline, matrix factorisation
# ---------------------------------------------------------------------------------------------


def biased_baseline(train, reg_items: float = 25.0, reg_users: float = 10.0, iterations: int = 10):
    """Fit r ~ mu + b_user + b_item by alternating regularised means (Koren's baseline).

    Returns ``predict(users, items) -> ratings`` (unknown ids get a bias of 0).
    """
    mu = float(train["rating"].mean())
    user_bias = {}
    item_bias = {}
    users, items, ratings = (train[c].to_numpy() for c in ("user_id", "movie_id", "rating"))
    n_users, n_items = users.max() + 1, items.max() + 1
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(iterations):
        residual = ratings - mu - bu[users]
        bi = np.bincount(items, residual, n_items) / (reg_items + np.bincount(items, minlength=n_items))
        residual = ratings - mu - bi[items]
        bu = np.bincount(users, residual, n_users) / (reg_users + np.bincount(users, minlength=n_users))
    user_bias, item_bias = bu, bi

    def predict(query_users, query_items):
        query_users, query_items = np.asarray(query_users), np.asarray(query_items)
        b_u = np.where(query_users < len(user_bias), user_bias[np.minimum(query_users, len(user_bias) - 1)], 0.0)
        b_i = np.where(query_items < len(item_bias), item_bias[np.minimum(query_items, len(item_bias) - 1)], 0.0)
        return np.clip(mu + b_u + b_i, 1.0, 5.0)

    return predict


def _torch():
    import torch

    return torch


class BiasedMF(_torch().nn.Module):
    """r_hat(u, i) = mu + b_u + b_i + p_u . q_i  (matrix factorisation with biases)."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, mu: float = 3.5):
        torch = _torch()
        super().__init__()
        self.user_factors = torch.nn.Embedding(n_users, dim)    # (U, d)
        self.item_factors = torch.nn.Embedding(n_items, dim)    # (I, d)
        self.user_bias = torch.nn.Embedding(n_users, 1)         # (U, 1)
        self.item_bias = torch.nn.Embedding(n_items, 1)         # (I, 1)
        self.mu = torch.nn.Parameter(torch.tensor(float(mu)))
        for table in (self.user_factors, self.item_factors):
            torch.nn.init.normal_(table.weight, std=0.01)
        for table in (self.user_bias, self.item_bias):
            torch.nn.init.zeros_(table.weight)

    def forward(self, users, items):                              # users, items: (B,)
        p, q = self.user_factors(users), self.item_factors(items)  # (B, d) each
        dot = (p * q).sum(dim=1)                                   # (B,)
        return self.mu + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1) + dot


def train_mf(train, n_users: int = 944, n_items: int = 1683, dim: int = 64, epochs: int = 200,
             lr: float = 0.02, reg: float = 0.05, bias_reg: float = 0.005, seed: int = 0, device="cpu"):
    """Train ``BiasedMF`` full-batch with Adam on squared error + L2 on the factors of each rating.

    The L2 term is averaged over the ratings (each rating penalises the rows it touches), which
    penalises rarely rated users and movies less in total, like SGD's per-rating regulariser.
    Returns ``(model, seconds)``.
    """
    torch = _torch()
    torch.manual_seed(seed)
    users = torch.as_tensor(train["user_id"].to_numpy(), device=device)     # (N,)
    items = torch.as_tensor(train["movie_id"].to_numpy(), device=device)    # (N,)
    ratings = torch.as_tensor(train["rating"].to_numpy(), dtype=torch.float32, device=device)
    model = BiasedMF(n_users, n_items, dim, mu=float(ratings.mean())).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started = time.perf_counter()
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        predicted = model(users, items)
        squared_error = ((predicted - ratings) ** 2).mean()
        factors = (model.user_factors(users) ** 2).sum(1) + (model.item_factors(items) ** 2).sum(1)
        biases = model.user_bias(users).squeeze(1) ** 2 + model.item_bias(items).squeeze(1) ** 2
        loss = squared_error + reg * factors.mean() + bias_reg * biases.mean()
        loss.backward()
        optimizer.step()
    return model.eval(), time.perf_counter() - started


def predict_mf(model, users, items):
    """Predicted ratings (clipped to 1..5) as a NumPy array."""
    torch = _torch()
    device = next(model.parameters()).device
    with torch.no_grad():
        predicted = model(torch.as_tensor(np.asarray(users), device=device),
                          torch.as_tensor(np.asarray(items), device=device))
    return predicted.clamp(1.0, 5.0).cpu().numpy()
