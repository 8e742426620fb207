"""Checks for the exercises of case study 6.4 (recommender): full-ranking rank and NDCG@10."""

from __future__ import annotations

import numpy as np

from lm4f import recsys
from lm4f.checks import ExerciseError, check_close, run_check

# (scores over item ids 0..7, target, seen items) -> 0-based rank among unseen items
_RANK_CASES = [
    (np.array([9.0, 0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2]), 3, []),
    (np.array([9.0, 0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2]), 3, [2, 6]),
    (np.array([9.0, 0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2]), 2, [2]),
    (np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 4, [1]),
]


def check_rank_among_unseen(rank_among_unseen) -> None:
    """Exercise 6.4.1: the rank of the held-out movie among movies the user has not seen."""
    hint = ("Hint: drop index 0 (padding) and every seen item except the target, then count the "
            "remaining items whose score is >= the target's score (ties count against the target).")
    mine = [run_check("rank_among_unseen", rank_among_unseen, scores.copy(), target, list(seen), hint=hint)
            for scores, target, seen in _RANK_CASES]
    reference = [recsys.rank_among_unseen(scores, target, seen) for scores, target, seen in _RANK_CASES]
    if any(value is None for value in mine):
        raise ExerciseError(f"rank_among_unseen: your function returned None. {hint}")
    if mine[1] == reference[0] != reference[1]:
        hint = "Hint: the seen items are still in the ranking; remove them (but never the target). " + hint
    elif mine[3] == 0 != reference[3]:
        hint = "Hint: with all scores tied the target must rank last: count scores >= the target's, not >. " + hint
    elif mine[0] == reference[0] + 1:
        hint = "Hint: the target was counted against itself, or index 0 (padding) was ranked. " + hint
    check_close("rank_among_unseen", mine, reference, atol=0, hint=hint)


def check_ndcg_at_10(ndcg_at_10) -> None:
    """Exercise 6.4.2: NDCG@10 with one relevant item per user, from 0-based ranks."""
    hint = "Hint: a rank r < 10 scores 1 / log2(r + 2), any other rank scores 0; return the mean."
    cases = [np.array([0]), np.array([0, 1, 9, 10, 500]), np.array([3, 3, 20])]
    mine = [run_check("ndcg_at_10", ndcg_at_10, ranks.copy(), hint=hint) for ranks in cases]
    reference = [recsys.ndcg_at_k(ranks, 10) for ranks in cases]
    if any(value is None for value in mine):
        raise ExerciseError(f"ndcg_at_10: your function returned None. {hint}")
    check_close("ndcg_at_10", mine, reference, atol=1e-9, hint=hint)
