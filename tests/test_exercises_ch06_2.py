"""Chapter 6.2 exercises: the solutions pass every check, the untouched stubs fail with a hint,
and the checks catch the typical wrong answers."""

from pathlib import Path

import numpy as np
import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch06_2
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch06_2_nlp.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 3) == [None, None, None]


def test_untouched_stubs_fail_with_hints():
    errors = check_errors(REPO / "exercises" / NOTEBOOK, 3)
    assert_untouched_stubs_fail(errors, ("6.2.1", "6.2.2", "6.2.3"))


def test_macro_f1_check_catches_class_1_only_and_accuracy():
    def f1_of_class_1(labels, predictions):
        true_positive = np.sum((predictions == 1) & (labels == 1))
        return float(2 * true_positive / (np.sum(predictions == 1) + np.sum(labels == 1)))

    def accuracy(labels, predictions):
        return float(np.mean(labels == predictions))

    with pytest.raises(ExerciseError, match="class 1 only"):
        ch06_2.check_macro_f1(f1_of_class_1)
    with pytest.raises(ExerciseError, match="accuracy"):
        ch06_2.check_macro_f1(accuracy)


def test_threshold_check_catches_a_fixed_half():
    with pytest.raises(ExerciseError, match="tune_threshold"):
        ch06_2.check_tune_threshold(lambda probabilities, labels: 0.5)


def test_top_k_check_catches_dot_product_and_reversed_order():
    def by_dot_product(query, matrix, k):
        scores = matrix @ query
        order = np.argsort(-scores)[:k]
        return order, scores[order]

    def least_similar(query, matrix, k):
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        scores = unit @ (query / np.linalg.norm(query))
        order = np.argsort(scores, kind="stable")[:k]
        return order, scores[order]

    with pytest.raises(ExerciseError, match="dot product"):
        ch06_2.check_top_k_cosine(by_dot_product)
    with pytest.raises(ExerciseError, match="LEAST"):
        ch06_2.check_top_k_cosine(least_similar)
