"""Chapter 5 exercises: the solutions pass every check, the untouched stubs fail with a hint, and
the checks catch the usual mistakes."""

import math
from pathlib import Path

import numpy as np
import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch05
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch05_derivatives.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 4) == [None, None, None, None]


def test_untouched_stubs_fail_with_hints():
    assert_untouched_stubs_fail(check_errors(REPO / "exercises" / NOTEBOOK, 4), ("5.1", "5.2", "5.3", "5.4"))


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_softmax_check_catches_the_missing_mean_and_overflow():
    def summed(logits, targets):  # forgets / N
        one_hot = np.eye(logits.shape[1])[targets]
        return softmax(logits) - one_hot

    def naive(logits, targets):  # exp without the max shift: overflows for logits ~ 1000
        with np.errstate(over="ignore", invalid="ignore"):
            exp = np.exp(logits)
            return (exp / exp.sum(axis=1, keepdims=True) - np.eye(logits.shape[1])[targets]) / len(targets)

    with pytest.raises(ExerciseError, match="N times too large"):
        ch05.check_softmax_cross_entropy_backward(summed)
    with pytest.raises(ExerciseError, match="nan or inf"):
        ch05.check_softmax_cross_entropy_backward(naive)


def test_gelu_check_catches_a_missing_product_rule_and_the_tanh_approximation():
    def cdf_only(x):
        return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    def tanh_approximation(x):  # derivative of the tanh approximation: close, but not exact GELU
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        t = np.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)

    with pytest.raises(ExerciseError, match="product rule"):
        ch05.check_gelu_derivative(cdf_only)
    with pytest.raises(ExerciseError, match="max difference"):
        ch05.check_gelu_derivative(tanh_approximation)


def test_layernorm_check_catches_dropping_the_mean_terms():
    def only_scaled(dy, x, gamma, eps):  # treats mean and variance as constants
        x_hat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
        return dy * gamma / np.sqrt(x.var(-1, keepdims=True) + eps), (dy * x_hat).sum(0), dy.sum(0)

    with pytest.raises(ExerciseError, match="dx"):
        ch05.check_layernorm_backward(only_scaled)
    with pytest.raises(ExerciseError, match="tuple"):
        ch05.check_layernorm_backward(lambda dy, x, gamma, eps: dy)


def test_gradient_check_catches_a_missing_half_and_a_changed_input():
    def no_half(f, x, eps):
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            keep = x[i]
            x[i] = keep + eps
            up = f(x)
            x[i] = keep - eps
            down = f(x)
            x[i] = keep
            grad[i] = (up - down) / eps
        return grad

    def leaves_bumped(f, x, eps):
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            base = f(x)
            x[i] += eps
            grad[i] = (f(x) - base) / eps
        return grad

    with pytest.raises(ExerciseError, match="twice the gradient"):
        ch05.check_numerical_gradient(no_half)
    with pytest.raises(ExerciseError, match="x was left changed"):
        ch05.check_numerical_gradient(leaves_bumped)
