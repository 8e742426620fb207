"""Checks for exercises/ch06_2_nlp.ipynb: macro-F1, a tuned decision threshold, cosine top-k.

Each check calls the learner's function on fixed inputs, compares with a reference, prints a
one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the answer is wrong.
"""

from __future__ import annotations

import numpy as np

from lm4f.checks import ExerciseError, check_close, run_check
from lm4f.nlp import best_threshold


def _reference_macro_f1(labels, predictions) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", labels=[0, 1], zero_division=0))


def check_macro_f1(macro_f1) -> float:
    """Exercise 6.2.1: the mean of the F1 of class 0 and the F1 of class 1."""
    hint = ("For each class c in (0, 1): precision = TP/(TP+FP), recall = TP/(TP+FN) counting c as the "
            "positive class, F1 = 2PR/(P+R) (0 when P+R = 0); return the mean of the two F1s.")
    rng = np.random.default_rng(62)
    labels = (rng.random(400) < 0.82).astype(int)  # 82 % recommended, like the reviews
    noisy = np.where(rng.random(400) < 0.15, 1 - labels, labels)
    cases = [
        (labels, noisy),
        (labels, np.ones_like(labels)),  # the majority class: F1 of class 0 is 0
        (np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])),
    ]
    for truth, predicted in cases:
        mine = run_check("macro_f1", macro_f1, truth.copy(), predicted.copy(), hint=hint)
        if mine is None:
            raise ExerciseError(f"macro_f1: your function returned None. {hint}")
        from sklearn.metrics import accuracy_score, f1_score

        if abs(float(mine) - _reference_macro_f1(truth, predicted)) > 1e-9:
            if abs(float(mine) - f1_score(truth, predicted)) < 1e-9:
                raise ExerciseError("macro_f1: you returned the F1 of class 1 only. Macro-F1 averages the "
                                    "F1 of BOTH classes, so a model that ignores the unhappy customers is punished.")
            if abs(float(mine) - accuracy_score(truth, predicted)) < 1e-9:
                raise ExerciseError(f"macro_f1: you returned the accuracy. {hint}")
        check_close("macro_f1", float(mine), _reference_macro_f1(truth, predicted), atol=1e-9, hint=hint)
    return _reference_macro_f1(labels, np.ones_like(labels))


def check_tune_threshold(tune_threshold) -> float:
    """Exercise 6.2.2: the threshold on the grid 0.05, 0.06, ..., 0.95 that maximises macro-F1."""
    hint = ("For each t in np.round(np.arange(0.05, 0.96, 0.01), 2): predict 1 where probability >= t, "
            "score macro-F1 against the labels, keep the first t with the highest score.")
    rng = np.random.default_rng(621)
    labels = (rng.random(500) < 0.82).astype(int)
    # a model that is too sure of "recommended": the best threshold is well above 0.5
    probabilities = np.clip(0.55 + 0.35 * labels + rng.normal(0, 0.15, 500), 0, 1)
    cases = [(probabilities, labels), (np.array([0.1, 0.35, 0.4, 0.8, 0.9]), np.array([0, 0, 1, 1, 1]))]
    for scores, truth in cases:
        mine = run_check("tune_threshold", tune_threshold, scores.copy(), truth.copy(), hint=hint)
        if mine is None:
            raise ExerciseError(f"tune_threshold: your function returned None. {hint}")
        check_close("tune_threshold", float(mine), best_threshold(scores, truth), atol=1e-9, hint=hint)
    return best_threshold(probabilities, labels)


def check_top_k_cosine(top_k_cosine) -> None:
    """Exercise 6.2.3: indices and cosine scores of the k rows most similar to the query, best first."""
    hint = ("Divide the query and every row by its L2 norm, scores = matrix_unit @ query_unit (shape (N,)), "
            "order = np.argsort(-scores)[:k]; return (order, scores[order]).")
    rng = np.random.default_rng(623)
    matrix = rng.normal(size=(50, 8)) * rng.uniform(0.2, 5.0, size=(50, 1))  # rows of very different length
    query = rng.normal(size=8)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    reference_scores = unit @ (query / np.linalg.norm(query))
    reference_order = np.argsort(-reference_scores, kind="stable")
    for k in (1, 5):
        result = run_check("top_k_cosine", top_k_cosine, query.copy(), matrix.copy(), k, hint=hint)
        if result is None or len(result) != 2:
            raise ExerciseError(f"top_k_cosine: return a pair (indices, scores). {hint}")
        indices, scores = np.asarray(result[0]), np.asarray(result[1], dtype=float)
        if indices.shape != (k,):
            raise ExerciseError(f"top_k_cosine(k={k}): indices have shape {indices.shape}, expected ({k},).")
        dot_order = np.argsort(-(matrix @ query))[:k]
        if np.array_equal(indices, dot_order) and not np.array_equal(indices, reference_order[:k]):
            raise ExerciseError("top_k_cosine: you ranked by the raw dot product. Long vectors win then; "
                                "normalise the query and the rows to unit length first.")
        if np.array_equal(indices, reference_order[::-1][:k]):
            raise ExerciseError("top_k_cosine: you returned the LEAST similar rows. Sort by -score.")
        check_close(f"top_k_cosine indices k={k}", indices, reference_order[:k], atol=0, rtol=0, hint=hint)
        check_close(f"top_k_cosine scores k={k}", scores, reference_scores[reference_order[:k]], atol=1e-9, hint=hint)
