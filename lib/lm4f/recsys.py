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

    def all_scores(self, user: int) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            p = self.user_factors.weight[user]                                   # (d,)
            scores = self.item_factors.weight @ p + self.item_bias.weight[:, 0]  # (I,)
        return scores.cpu().numpy()


def train_bpr(sequences: dict[int, list[int]], n_users: int = 944, n_items: int = N_ITEMS, dim: int = 64,
              epochs: int = 10, lr: float = 0.01, reg: float = 1e-4, batch_size: int = 1024, seed: int = 0):
    """BPR: for each (user, seen item) pair sample an unseen item and push score(seen) above it."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pairs = np.array([(u, i) for u, items in sequences.items() for i in items], dtype=np.int64)  # (N, 2)
    seen = {u: set(items) for u, items in sequences.items()}
    model = BPRMF(n_users, n_items, dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started = time.perf_counter()
    for _ in range(epochs):
        negatives = rng.integers(1, n_items, size=len(pairs))
        for row, (user, _) in enumerate(pairs):   # resample the few negatives the user has seen
            while negatives[row] in seen[user]:
                negatives[row] = rng.integers(1, n_items)
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            users = torch.tensor(pairs[batch, 0])
            positives, negs = torch.tensor(pairs[batch, 1]), torch.tensor(negatives[batch])
            margin = model.score(users, positives) - model.score(users, negs)   # (B,)
            l2 = (model.user_factors(users) ** 2).sum(1) + (model.item_factors(positives) ** 2).sum(1) \
                + (model.item_factors(negs) ** 2).sum(1)
            loss = -torch.nn.functional.logsigmoid(margin).mean() + reg * l2.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval(), time.perf_counter() - started


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

    def forward(self, sequences):                                   # (B, T) movie ids, 0 = padding
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
        hidden = self.norm(hidden)
        return hidden @ self.item_embedding.weight.T                            # (B, T, I)

    def next_item_scores(self, history: list[int]) -> np.ndarray:
        """Scores over all item ids for the movie that follows ``history``."""
        torch = _torch()
        inputs = torch.tensor(pad_left([history], self.max_len))                # (1, T)
        with torch.no_grad():
            logits = self.forward(inputs)[0, -1]                                # (I,)
        return logits.cpu().numpy()


def pad_left(sequences: list[list[int]], length: int) -> np.ndarray:
    """Keep the last ``length`` ids of each sequence and left-pad with 0: (B, length) int64."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, items in enumerate(sequences):
        items = list(items)[-length:]
        if items:
            out[row, length - len(items):] = items
    return out


def train_sasrec(sequences: dict[int, list[int]], dim: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, epochs: int = 30, lr: float = 0.002, batch_size: int = 128,
                 dropout: float = 0.2, seed: int = 0, device="cpu", n_items: int = N_ITEMS):
    """Train ``SASRec`` on each user's sequence: inputs ``s[:-1]``, targets ``s[1:]`` (next movie).

    Returns ``(model, seconds, losses)`` with the mean training loss of each epoch.
    """
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    usable = [items for items in sequences.values() if len(items) >= 2]
    windows = pad_left(usable, max_len + 1)                                      # (N, T+1)
    inputs_all = torch.tensor(windows[:, :-1], device=device)                   # (N, T)
    targets_all = torch.tensor(windows[:, 1:], device=device)                   # (N, T), 0 = no target
    model = SASRec(n_items, dim, layers, heads, max_len, dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for batch in np.array_split(rng.permutation(len(usable)), max(1, len(usable) // batch_size)):
            inputs, targets = inputs_all[batch], targets_all[batch]
            logits = model(inputs)                                               # (B, T, I)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_items), targets.reshape(-1),
                                                     ignore_index=0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        losses.append(total / count)
    return model.eval(), time.perf_counter() - started, losses


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------
# The object the API serves
# ---------------------------------------------------------------------------------------------


class Recommender:
    """Top-k movies for a known user or an ad-hoc history, with seen movies removed.

    ``score_history(history) -> scores`` over all item ids (e.g. ``SASRec.next_item_scores``);
    ``histories``: what each known user has watched; ``popularity``: scores for the cold-start
    fallback; ``titles``: movie_id -> title.
    """

    def __init__(self, score_history, histories: dict[int, list[int]], popularity, titles: dict[int, str],
                 known_users=None, name: str = "transformer"):
        self.score_history = score_history
        self.histories = histories
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.titles = titles
        self.known_users = set(known_users) if known_users is not None else set(histories)
        self.name = name

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


def save_recommender(folder, model: SASRec, recommender: Recommender) -> dict:
    """Write the Transformer's weights (``sasrec.safetensors``), each known user's history
    (``histories.json``), the movie titles (``titles.json``, the id map) and the popularity scores of
    the cold-start fallback (``popularity.npy``) into ``folder``; return the config (the model's
    shape, the known user ids, the strategy name)."""
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
    return {"model": {"kind": "sasrec", "n_items": model.n_items, "dim": model.item_embedding.embedding_dim,
                      "layers": len(model.blocks.layers), "heads": first.self_attn.num_heads,
                      "max_len": model.max_len, "dropout": float(model.dropout.p)},
            "known_users": sorted(int(user) for user in recommender.known_users), "strategy": recommender.name}


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
    try:
        histories = {int(user): [int(i) for i in items]
                     for user, items in json.loads(saved.file(HISTORIES_FILE).read_text()).items()}
        titles = {int(item): str(title) for item, title in json.loads(saved.file(TITLES_FILE).read_text()).items()}
        popularity = np.load(saved.file(POPULARITY_FILE), allow_pickle=False)
    except (ValueError, OSError, AttributeError) as error:
        what = f"(or {TITLES_FILE}, {POPULARITY_FILE}) cannot be read ({error})"
        raise saved.problem(HISTORIES_FILE, what) from error
    if popularity.shape != (model.n_items,):
        raise saved.problem(POPULARITY_FILE, f"has shape {popularity.shape}, expected ({model.n_items},)")
    return Recommender(model.next_item_scores, histories=histories, popularity=popularity, titles=titles,
                       known_users=config["known_users"], name=config.get("strategy", "transformer"))
