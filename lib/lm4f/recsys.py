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


def _ranking_inputs(split: LeaveOneOut, which: str, with_valid_item: bool):
    """Users, targets, model inputs and the movies to leave out of the ranking, for one split side."""
    if which not in ("valid", "test"):
        raise ValueError(f'which must be "valid" or "test", got {which!r}.')
    targets = split.test if which == "test" else split.valid
    users = list(targets)
    inputs, seen = [], []
    for user in users:
        known = split.train[user] + ([split.valid[user]] if which == "test" else [])
        inputs.append(known if with_valid_item or which == "valid" else list(split.train[user]))
        seen.append(known)
    return users, [targets[user] for user in users], inputs, seen


@dataclass
class Ranking:
    """Where each user's held-out item landed, and what each user was shown.

    ``users`` (N,), ``ranks`` (N,): 0-based rank of the held-out item among the movies the user has
    not seen (full ranking, ties against the item); ``top`` (N, k): the k recommended movie ids.
    Kept per user so that two models can be compared on the same users (a paired bootstrap).
    """

    users: np.ndarray
    ranks: np.ndarray
    top: np.ndarray

    def hits(self, k: int = 10) -> np.ndarray:
        """1.0 where the held-out item is in the top k, else 0.0, per user."""
        return (self.ranks < k).astype(np.float64)

    def gains(self, k: int = 10) -> np.ndarray:
        """Per-user NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k."""
        return np.where(self.ranks < k, 1.0 / np.log2(self.ranks + 2.0), 0.0)

    def summary(self, k: int = 10) -> dict:
        return {"users": len(self.ranks), f"HR@{k}": hit_rate_at_k(self.ranks, k),
                f"NDCG@{k}": ndcg_at_k(self.ranks, k)}


def rank_users(score_batch, split: LeaveOneOut, which: str = "test", k: int = 10, with_valid_item: bool = True,
               batch_size: int = 256) -> Ranking:
    """Full-ranking evaluation of many users at once.

    ``score_batch(users, histories) -> (B, I)`` scores over all item ids for a batch of users and
    the histories they are scored from (a model can use either: BPR the user id, a sequence model
    the history). For ``which="valid"`` the input is the training history. For ``"test"`` it is
    training history + the validation item, or the training history alone with
    ``with_valid_item=False`` (for a model, such as BPR, that cannot use an item it was not trained
    on: then every model gets the same input). Either way every movie the user rated before the
    target is removed from the ranking; the target's rank counts ties against it, like
    ``rank_among_unseen``.
    """
    users, targets, inputs, seen = _ranking_inputs(split, which, with_valid_item)
    if not users:
        raise ValueError(f"No user has a {which} item: leave_one_out gives one only to users with 3 or more items.")
    ranks = np.zeros(len(users), dtype=np.int64)
    top = np.zeros((len(users), k), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        rows = slice(start, start + batch_size)
        scores = np.array(score_batch(users[rows], inputs[rows]), dtype=np.float64)   # (B, I)
        if scores.ndim != 2 or scores.shape[0] != len(users[rows]):
            raise ValueError(f"score_batch returned shape {scores.shape}; expected ({len(users[rows])}, n_items).")
        scores[:, 0] = -np.inf                                                        # padding id
        for row, (target, items) in enumerate(zip(targets[rows], seen[rows])):
            items = np.asarray([item for item in items if item != target], dtype=np.int64)
            scores[row, items] = -np.inf
        target_scores = scores[np.arange(len(scores)), targets[rows]]                # (B,)
        # rank = how many other candidates score at least as high (ties count against the target)
        ranks[rows] = np.maximum((scores >= target_scores[:, None]).sum(axis=1) - 1, 0)
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]                         # (B, k), unordered
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        top[rows] = np.take_along_axis(best, order, axis=1)
    return Ranking(np.asarray(users), ranks, top)


def evaluate_ranking(score_fn, split: LeaveOneOut, which: str = "test", k: int = 10, history_fn=None,
                     with_valid_item: bool = True) -> dict:
    """Full-ranking HR@k and NDCG@k, one user at a time.

    ``score_fn(user, history) -> scores`` over all item ids. For ``which="test"`` the history is
    train + the validation item (train only with ``with_valid_item=False``); for ``"valid"`` it is
    train only. Items the user rated before the target are removed from the ranking. The batched
    ``rank_users`` does the work and keeps the per-user ranks.
    """
    def score_batch(users, histories):
        return np.stack([np.asarray(score_fn(user, history), dtype=np.float64)
                         for user, history in zip(users, histories)])

    return rank_users(score_batch, split, which, k, with_valid_item=with_valid_item).summary(k)


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
    """r_hat(u, i) = mu + b_u + b_i + (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j) . q_i

    Matrix factorisation with biases. With ``implicit`` (a sparse (U, I) matrix holding
    ``1/sqrt(|N(u)|)`` where user u rated item j in the *training* data) it is SVD++ (Koren, 2008):
    the movies a user chose to rate say something about them beyond the ratings themselves.
    Without it, the implicit term is absent and this is plain biased MF.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, mu: float = 3.5, implicit=None):
        torch = _torch()
        super().__init__()
        self.user_factors = torch.nn.Embedding(n_users, dim)    # (U, d)
        self.item_factors = torch.nn.Embedding(n_items, dim)    # (I, d)
        self.user_bias = torch.nn.Embedding(n_users, 1)         # (U, 1)
        self.item_bias = torch.nn.Embedding(n_items, 1)         # (I, 1)
        self.mu = torch.nn.Parameter(torch.tensor(float(mu)))
        self.implicit = implicit                                 # (U, I) sparse or None
        self.implicit_factors = torch.nn.Embedding(n_items, dim) if implicit is not None else None  # (I, d)
        for table in (self.user_factors, self.item_factors, self.implicit_factors):
            if table is not None:
                torch.nn.init.normal_(table.weight, std=0.01)
        for table in (self.user_bias, self.item_bias):
            torch.nn.init.zeros_(table.weight)

    def user_vectors(self, users):                               # (B,) -> (B, d)
        p = self.user_factors(users)
        if self.implicit is None:
            return p
        implicit = _torch().sparse.mm(self.implicit, self.implicit_factors.weight)   # (U, d)
        return p + implicit[users]

    def forward(self, users, items):                              # users, items: (B,)
        p, q = self.user_vectors(users), self.item_factors(items)  # (B, d) each
        dot = (p * q).sum(dim=1)                                   # (B,)
        return self.mu + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1) + dot


def implicit_matrix(users, items, n_users: int, n_items: int, device="cpu"):
    """The sparse (U, I) "who rated what" matrix of SVD++: 1/sqrt(|N(u)|) where u rated i, else 0."""
    torch = _torch()
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    counts = np.bincount(users, minlength=n_users).astype(np.float32)          # (U,)
    values = torch.tensor(1.0 / np.sqrt(counts[users]), dtype=torch.float32)   # (N,)
    index = torch.tensor(np.stack([users, items]))                             # (2, N)
    with torch.sparse.check_sparse_tensor_invariants(True):
        matrix = torch.sparse_coo_tensor(index, values, (n_users, n_items))
    return matrix.coalesce().to(device)


def train_mf(train, n_users: int = 944, n_items: int = 1683, dim: int = 64, epochs: int = 20,
             lr: float = 0.005, reg: float = 0.05, batch_size: int = 1024, seed: int = 0, device="cpu",
             implicit_reg: float | None = None, cosine: bool = False):
    """Train ``BiasedMF`` with mini-batch Adam on squared error + L2 on the rows each rating touches.

    The L2 term is per rating (like SGD's regulariser), so a movie with many ratings is pulled
    towards zero more often, but each pull is small. ``implicit_reg`` (a number) switches on the
    SVD++ implicit term, whose item table gets weight decay ``implicit_reg * ||Y||^2 / N`` per batch;
    ``cosine`` decays the learning rate to zero over the epochs. Returns ``(model, seconds)``.
    """
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    users = torch.tensor(train["user_id"].to_numpy(), device=device)     # (N,)
    items = torch.tensor(train["movie_id"].to_numpy(), device=device)    # (N,)
    ratings = torch.tensor(train["rating"].to_numpy(), dtype=torch.float32, device=device)
    implicit = None
    if implicit_reg is not None:
        implicit = implicit_matrix(train["user_id"], train["movie_id"], n_users, n_items, device)
    model = BiasedMF(n_users, n_items, dim, mu=float(ratings.mean()), implicit=implicit).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) if cosine else None
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(ratings), generator=generator).to(device)
        for batch in order.split(batch_size):
            u, i, r = users[batch], items[batch], ratings[batch]          # (B,) each
            p, q = model.user_factors(u), model.item_factors(i)           # (B, d) each
            p_all = model.user_vectors(u)                                  # (B, d), p + implicit term
            predicted = (model.mu + model.user_bias(u).squeeze(1) + model.item_bias(i).squeeze(1)
                         + (p_all * q).sum(dim=1))                         # (B,)
            loss = ((predicted - r) ** 2).mean() + reg * ((p ** 2).sum(1) + (q ** 2).sum(1)).mean()
            if implicit is not None:
                loss = loss + implicit_reg * (model.implicit_factors.weight ** 2).sum() / len(ratings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()
    return model.eval(), time.perf_counter() - started


def predict_mf(model, users, items):
    """Predicted ratings (clipped to 1..5) as a NumPy array."""
    torch = _torch()
    device = next(model.parameters()).device
    with torch.no_grad():
        predicted = model(torch.tensor(np.array(users), device=device),
                          torch.tensor(np.array(items), device=device))
    return predicted.clamp(1.0, 5.0).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Next-item recommendation: popularity, BPR-MF, and a Transformer over the behaviour sequence
# ---------------------------------------------------------------------------------------------

N_ITEMS = 1683  # MovieLens-100K movie ids 1..1682, plus the padding id 0


def popularity_scores(sequences: dict[int, list[int]], n_items: int = N_ITEMS) -> np.ndarray:
    """How many users interacted with each item id (index 0, padding, gets -1)."""
    counts = np.zeros(n_items, dtype=np.float64)
    for items in sequences.values():
        np.add.at(counts, np.asarray(items, dtype=np.int64), 1.0)
    counts[0] = -1.0
    return counts


def catalogue_coverage(top, n_items: int = N_ITEMS) -> float:
    """Share of the catalogue (item ids 1..n_items-1) that appears in at least one top-k list."""
    shown = np.unique(np.asarray(top))
    return float(np.sum(shown > 0) / (n_items - 1))


def popularity_percentile(items, popularity) -> np.ndarray:
    """Each item's popularity as a percentile of the catalogue (0: least watched, 100: most watched).

    ``popularity``: counts over item ids (``popularity_scores``; index 0, padding, is left out and
    maps to NaN). Tied items share the mean of their percentiles, so in a catalogue where every item
    is equally popular they all sit at 50. The mean over the movies a model recommends measures its
    popularity bias; compare it with the same figure for the movies users actually watched next.
    """
    from scipy.stats import rankdata

    counts = np.asarray(popularity, dtype=np.float64)[1:]
    percentiles = 100.0 * (rankdata(counts, method="average") - 1.0) / max(len(counts) - 1, 1)
    return np.concatenate([[np.nan], percentiles])[np.asarray(items, dtype=np.int64)]


def cooccurrence_cosine(sequences: dict[int, list[int]], n_items: int = N_ITEMS) -> np.ndarray:
    """Item-item cosine of "who watched what": co-watchers of i and j / sqrt(watchers of i * watchers of j).

    The classic item-to-item similarity (Linden, Smith & York, 2003). Dividing by the geometric mean
    of the two audiences is the popularity correction: a raw count of co-watchers would make the
    most-watched movie everyone's neighbour. Returns an (n_items, n_items) array; the diagonal and
    the padding row and column are 0, as is any pair with an item nobody watched.
    """
    users = sorted(sequences)
    matrix = np.zeros((len(users), n_items), dtype=np.float64)                 # (U, I), 1 = watched
    for row, user in enumerate(users):
        matrix[row, np.asarray(sequences[user], dtype=np.int64)] = 1.0
    together = matrix.T @ matrix                                               # (I, I) co-watchers
    audience = np.sqrt(np.diag(together)).copy()                               # (I,)
    audience[audience == 0] = np.inf                                           # nobody watched it: 0
    cosine = together / np.outer(audience, audience)
    np.fill_diagonal(cosine, 0.0)
    cosine[0, :] = cosine[:, 0] = 0.0
    return cosine


def shuffled_sequences(sequences: dict[int, list[int]], seed: int = 0) -> dict[int, list[int]]:
    """Each user's items in a random order (seeded): the same bags of items with the order destroyed.

    Training and testing a sequence model on these, and comparing it with the same model on the real
    order, measures what the order itself is worth (an ablation).
    """
    rng = np.random.default_rng(seed)
    return {user: [int(item) for item in rng.permutation(np.asarray(items, dtype=np.int64))]
            for user, items in sequences.items()}


class _BestWeights:
    """Early stopping on validation: keep a copy of the weights of the best-scoring epoch."""

    def __init__(self, model):
        self.model, self.score, self.state = model, -np.inf, None

    def offer(self, score: float) -> None:
        if score > self.score:
            self.score = score
            self.state = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


class BPRMF(_torch().nn.Module):
    """Implicit-feedback matrix factorisation, trained with the BPR pairwise loss."""

    def __init__(self, n_users: int, n_items: int = N_ITEMS, dim: int = 64):
        torch = _torch()
        super().__init__()
        self.user_factors = torch.nn.Embedding(n_users, dim)   # (U, d)
        self.item_factors = torch.nn.Embedding(n_items, dim)   # (I, d)
        self.item_bias = torch.nn.Embedding(n_items, 1)        # (I, 1)
        torch.nn.init.normal_(self.user_factors.weight, std=0.1)
        torch.nn.init.normal_(self.item_factors.weight, std=0.1)
        torch.nn.init.zeros_(self.item_bias.weight)

    def score(self, users, items):                              # (B,), (B,) -> (B,)
        return (self.user_factors(users) * self.item_factors(items)).sum(1) + self.item_bias(items).squeeze(1)

    def user_scores(self, users) -> np.ndarray:
        """Scores over all item ids for each user id in ``users``: (B, I)."""
        torch = _torch()
        with torch.no_grad():
            p = self.user_factors.weight[torch.as_tensor(np.asarray(users, dtype=np.int64))]   # (B, d)
            scores = p @ self.item_factors.weight.T + self.item_bias.weight[:, 0]             # (B, I)
        return scores.cpu().numpy()

    def all_scores(self, user: int) -> np.ndarray:
        return self.user_scores([user])[0]


def train_bpr(sequences: dict[int, list[int]], n_users: int = 944, n_items: int = N_ITEMS, dim: int = 64,
              epochs: int = 10, lr: float = 0.01, reg: float = 1e-4, batch_size: int = 1024, seed: int = 0,
              validate=None):
    """BPR: for each (user, seen item) pair sample an unseen item and push score(seen) above it.

    Every epoch visits every training interaction once, with fresh negatives. ``validate``: an
    optional function ``model -> score`` (higher is better, e.g. validation HR@10) called after each
    epoch; the weights of the best epoch are kept (early stopping on validation, ties to the
    earlier epoch). Returns ``(model, seconds)``; ``seconds`` counts training, not validation.
    """
    torch = _torch()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pairs = np.array([(u, i) for u, items in sequences.items() for i in items], dtype=np.int64)  # (N, 2)
    seen = np.zeros((n_users, n_items), dtype=bool)                                            # (U, I)
    seen[pairs[:, 0], pairs[:, 1]] = True
    model = BPRMF(n_users, n_items, dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best = _BestWeights(model)
    seconds = 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        negatives = rng.integers(1, n_items, size=len(pairs))
        clash = seen[pairs[:, 0], negatives]
        while clash.any():                     # resample the few negatives the user has seen
            negatives[clash] = rng.integers(1, n_items, size=int(clash.sum()))
            clash = seen[pairs[:, 0], negatives]
        model.train()
        for batch in np.array_split(rng.permutation(len(pairs)), max(1, -(-len(pairs) // batch_size))):
            users = torch.tensor(pairs[batch, 0])
            positives, negs = torch.tensor(pairs[batch, 1]), torch.tensor(negatives[batch])
            margin = model.score(users, positives) - model.score(users, negs)   # (B,)
            l2 = (model.user_factors(users) ** 2).sum(1) + (model.item_factors(positives) ** 2).sum(1) \
                + (model.item_factors(negs) ** 2).sum(1)
            loss = -torch.nn.functional.logsigmoid(margin).mean() + reg * l2.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - started
        if validate is not None:
            best.offer(float(validate(model.eval())))
    best.restore()
    return model.eval(), seconds


class SASRec(_torch().nn.Module):
    """A causal Transformer over a user's behaviour sequence that predicts the next movie.

    Input: the last ``max_len`` movie ids, left-padded with 0. Output at each position: a score
    for every movie (dot product with the shared item embedding), trained with full softmax
    cross-entropy on the next movie. This is the decoder-only (GPT-style) reading of SASRec.
    """

    def __init__(self, n_items: int = N_ITEMS, dim: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, dropout: float = 0.2):
        torch = _torch()
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_embedding = torch.nn.Embedding(n_items, dim, padding_idx=0)   # (I, d)
        self.position_embedding = torch.nn.Embedding(max_len, dim)              # (T, d)
        block = torch.nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=dropout,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(dim)
        self.dropout = torch.nn.Dropout(dropout)
        torch.nn.init.normal_(self.item_embedding.weight, std=dim ** -0.5)
        torch.nn.init.normal_(self.position_embedding.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def hidden_states(self, sequences):                             # (B, T) movie ids, 0 = padding
        """What the model knows after each position: (B, T, d); position t has seen items 0..t only."""
        torch = _torch()
        batch, length = sequences.shape
        if length > self.max_len:
            raise ValueError(f"SASRec: sequences have length {length}, above max_len={self.max_len}; "
                             "keep the last max_len items (see pad_left).")
        positions = torch.arange(length, device=sequences.device)  # (T,)
        hidden = self.item_embedding(sequences)                                  # (B, T, d)
        hidden = self.dropout(hidden + self.position_embedding(positions))       # (B, T, d)
        causal = torch.nn.Transformer.generate_square_subsequent_mask(length, device=sequences.device)
        hidden = self.blocks(hidden, mask=causal, is_causal=True)               # (B, T, d)
        return self.norm(hidden)

    def forward(self, sequences):                                   # (B, T) movie ids, 0 = padding
        return self.hidden_states(sequences) @ self.item_embedding.weight.T     # (B, T, I)

    def score_histories(self, histories: list[list[int]], batch_size: int = 256) -> np.ndarray:
        """Scores over all item ids for the movie that follows each history: (N, I)."""
        torch = _torch()
        device = self.item_embedding.weight.device
        out = []
        with torch.no_grad():
            for start in range(0, len(histories), batch_size):
                inputs = torch.tensor(pad_left(histories[start:start + batch_size], self.max_len), device=device)
                last = self.hidden_states(inputs)[:, -1]                         # (B, d)
                out.append((last @ self.item_embedding.weight.T).cpu().numpy())  # (B, I)
        return np.concatenate(out) if out else np.zeros((0, self.n_items), dtype=np.float32)

    def next_item_scores(self, history: list[int]) -> np.ndarray:
        """Scores over all item ids for the movie that follows ``history``."""
        return self.score_histories([history])[0]


def pad_left(sequences: list[list[int]], length: int) -> np.ndarray:
    """Keep the last ``length`` ids of each sequence and left-pad with 0: (B, length) int64."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, items in enumerate(sequences):
        items = list(items)[-length:]
        if items:
            out[row, length - len(items):] = items
    return out


def training_windows(sequences, max_len: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut every sequence into windows so that **every position after the first is a target exactly once**.

    A causal model trained on a window predicts each item from the items before it, so one window of
    ``max_len + 1`` items gives ``max_len`` targets. A sequence longer than that is cut from its end
    into windows ``stride`` items apart (default ``max_len``: no overlap); each window scores only the
    targets no later window covers, so each target sees at least ``max_len - stride + 1`` earlier items
    (all of them when the history is shorter). Returns ``(inputs, targets)``, both (W, max_len) int64,
    left-padded with 0; a 0 target is not scored.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be between 1 and max_len={max_len}, got {stride}.")
    inputs, targets = [], []
    for items in sequences:
        items = list(items)
        end = len(items)                                   # the window predicts items[start + 1:end]
        while end >= 2:
            start = max(0, end - max_len - 1)
            last = start == 0 or end - stride <= 1         # the earliest window scores all its targets
            first_target = start + 1 if last else end - stride
            inputs.append(items[start:end - 1])
            targets.append([item if position >= first_target else 0
                            for position, item in enumerate(items[start + 1:end], start=start + 1)])
            if last:
                break
            end -= stride
    return pad_left(inputs, max_len), pad_left(targets, max_len)


def train_sasrec(sequences: dict[int, list[int]], dim: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, epochs: int = 5, lr: float = 0.003, batch_size: int = 64,
                 dropout: float = 0.2, seed: int = 0, device="cpu", n_items: int = N_ITEMS,
                 stride: int | None = None, validate=None):
    """Train ``SASRec`` to predict every next movie of every user: each training item after a user's
    first is a target once per epoch (``training_windows``), as BPR sees each interaction once per epoch.

    Loss: full softmax cross-entropy over all movies, computed only at positions that have a target.
    ``validate``: an optional function ``model -> score`` (higher is better, e.g. validation HR@10)
    called after each epoch; the weights of the best epoch are kept (early stopping on validation).
    Returns ``(model, seconds, losses)``: training seconds (validation excluded) and the mean
    training loss of each epoch.
    """
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    windows, window_targets = training_windows([items for items in sequences.values() if len(items) >= 2],
                                               max_len, stride)
    inputs_all = torch.tensor(windows, device=device)                           # (W, T)
    targets_all = torch.tensor(window_targets, device=device)                   # (W, T), 0 = no target
    model = SASRec(n_items, dim, layers, heads, max_len, dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best = _BestWeights(model)
    losses, seconds = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for batch in np.array_split(rng.permutation(len(windows)), max(1, len(windows) // batch_size)):
            targets = targets_all[batch]                                        # (B, T)
            scored = targets > 0
            hidden = model.hidden_states(inputs_all[batch])[scored]             # (M, d): positions with a target
            logits = hidden @ model.item_embedding.weight.T                     # (M, I)
            loss = torch.nn.functional.cross_entropy(logits, targets[scored])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(logits), count + len(logits)
        losses.append(total / count)
        seconds += time.perf_counter() - started
        if validate is not None:
            best.offer(float(validate(model.eval())))
    best.restore()
    return model.eval(), seconds, losses


# ---------------------------------------------------------------------------------------------
# The object the API serves
# ---------------------------------------------------------------------------------------------


class Recommender:
    """Top-k movies for a known user or an ad-hoc history, with seen movies removed.

    ``score_history(history) -> scores`` over all item ids (e.g. ``SASRec.next_item_scores``);
    ``histories``: what each known user has watched; ``popularity``: scores for the cold-start
    fallback; ``titles``: movie_id -> title.

    Items are always the model's dense integer ids (0 is padding). ``item_ids``, for data of your
    own (``lm4f.own_data.read_interactions``), is your id of each dense id (``item_ids[0]`` unused):
    ``to_internal`` and ``to_external`` map between them, and ``histories`` is keyed by your user
    ids. Without it (MovieLens) the ids are the integers themselves.
    """

    def __init__(self, score_history, histories: dict, popularity, titles: dict[int, str],
                 known_users=None, name: str = "transformer", item_ids: list[str] | None = None):
        self.score_history = score_history
        self.histories = histories
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.titles = titles
        self.known_users = set(known_users) if known_users is not None else set(histories)
        self.name = name
        self.item_ids = list(item_ids) if item_ids is not None else None
        self._dense = {item: i for i, item in enumerate(self.item_ids) if i > 0} if self.item_ids else None

    @property
    def string_ids(self) -> bool:
        """True when users and items have ids of your own (text), False for MovieLens' integers."""
        return self.item_ids is not None

    def external_items(self) -> list:
        """Every item's id as callers see it: your ids, or MovieLens' movie ids."""
        return self.item_ids[1:] if self.item_ids is not None else sorted(self.titles)

    def to_internal(self, items) -> list[int]:
        """Callers' item ids -> dense ids; ``KeyError`` lists the unknown ones."""
        if self._dense is None:
            return [int(item) for item in items]
        unknown = [item for item in items if item not in self._dense]
        if unknown:
            raise KeyError(unknown)
        return [self._dense[item] for item in items]

    def to_external(self, item: int):
        """A dense id -> the caller's id."""
        return self.item_ids[item] if self.item_ids is not None else int(item)

    @property
    def n_items(self) -> int:
        return len(self.popularity)

    def top_k(self, scores, exclude, k: int) -> list[tuple[int, float]]:
        scores = np.asarray(scores, dtype=np.float64).copy()
        scores[0] = -np.inf
        scores[np.asarray(list(exclude), dtype=np.int64)] = -np.inf
        best = np.argsort(-scores, kind="stable")[:k]
        return [(int(item), float(scores[item])) for item in best if np.isfinite(scores[item])]

    def for_history(self, history: list[int], k: int = 10):
        return self.name, self.top_k(self.score_history(list(history)), history, k)

    def for_user(self, user_id: int, k: int = 10):
        history = self.histories.get(user_id, [])
        if not history:   # cold start: a registered user with no behaviour yet
            return "popularity", self.top_k(self.popularity, [], k)
        return self.for_history(history, k)

    def popular(self, k: int = 10):
        return self.top_k(self.popularity, [], k)


# ---------------------------------------------------------------------------------------------
# Saving and loading what the recommender API serves (a version folder of lm4f.saved_models)
# ---------------------------------------------------------------------------------------------
SASREC_FILE = "sasrec.safetensors"
HISTORIES_FILE = "histories.json"
TITLES_FILE = "titles.json"
POPULARITY_FILE = "popularity.npy"
ITEM_IDS_FILE = "item_ids.json"


def save_recommender(folder, model: SASRec, recommender: Recommender) -> dict:
    """Write the Transformer's weights (``sasrec.safetensors``), each known user's history
    (``histories.json``), the movie titles (``titles.json``, the id map) and the popularity scores of
    the cold-start fallback (``popularity.npy``) into ``folder``; return the config (the model's
    shape, the known user ids, the strategy name). A recommender with ids of your own also writes
    ``item_ids.json``, your id of each dense item id, and keeps your user ids as they are."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()},
              str(folder / SASREC_FILE))
    (folder / HISTORIES_FILE).write_text(json.dumps({str(user): [int(i) for i in items]
                                                     for user, items in sorted(recommender.histories.items())}))
    (folder / TITLES_FILE).write_text(json.dumps({str(int(item)): title for item, title in
                                                  sorted(recommender.titles.items())}, ensure_ascii=False))
    np.save(folder / POPULARITY_FILE, recommender.popularity.astype(np.float64))
    first = model.blocks.layers[0]
    config = {"model": {"kind": "sasrec", "n_items": model.n_items, "dim": model.item_embedding.embedding_dim,
                        "layers": len(model.blocks.layers), "heads": first.self_attn.num_heads,
                        "max_len": model.max_len, "dropout": float(model.dropout.p)},
              "strategy": recommender.name}
    if recommender.string_ids:
        (folder / ITEM_IDS_FILE).write_text(json.dumps(recommender.item_ids, ensure_ascii=False))
        return {**config, "ids": "string", "item_ids": ITEM_IDS_FILE,
                "known_users": sorted(str(user) for user in recommender.known_users)}
    return {**config, "known_users": sorted(int(user) for user in recommender.known_users)}


def load_recommender(saved) -> Recommender:
    """The ``Recommender`` of a verified saved version (``lm4f.saved_models.open_model(path, "movies")``)."""
    import json

    from safetensors.torch import load_file

    config = saved.config
    shape = {key: value for key, value in config["model"].items() if key != "kind"}
    model = SASRec(**shape)
    try:
        model.load_state_dict(load_file(str(saved.file(SASREC_FILE))))
    except Exception as error:  # safetensors or a shape mismatch
        raise saved.problem(SASREC_FILE, f"does not hold the weights of a SASRec of shape {shape} "
                                         f"({type(error).__name__}: {str(error)[:200]})") from error
    model.eval()
    string_ids = config.get("ids") == "string"
    user_id = str if string_ids else int
    try:
        histories = {user_id(user): [int(i) for i in items]
                     for user, items in json.loads(saved.file(HISTORIES_FILE).read_text()).items()}
        titles = {int(item): str(title) for item, title in json.loads(saved.file(TITLES_FILE).read_text()).items()}
        popularity = np.load(saved.file(POPULARITY_FILE), allow_pickle=False)
        item_ids = json.loads(saved.file(config["item_ids"]).read_text()) if string_ids else None
    except (ValueError, OSError, AttributeError, KeyError) as error:
        what = f"(or {TITLES_FILE}, {POPULARITY_FILE}, {ITEM_IDS_FILE}) cannot be read ({error})"
        raise saved.problem(HISTORIES_FILE, what) from error
    if popularity.shape != (model.n_items,):
        raise saved.problem(POPULARITY_FILE, f"has shape {popularity.shape}, expected ({model.n_items},)")
    if item_ids is not None and len(item_ids) != model.n_items:
        raise saved.problem(ITEM_IDS_FILE, f"holds {len(item_ids)} ids, expected {model.n_items} (one per item id)")
    return Recommender(model.next_item_scores, histories=histories, popularity=popularity, titles=titles,
                       known_users=[user_id(user) for user in config["known_users"]],
                       name=config.get("strategy", "transformer"), item_ids=item_ids)
