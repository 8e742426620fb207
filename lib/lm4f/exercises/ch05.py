"""Checks for exercises/ch05_derivatives.ipynb: softmax cross-entropy backward, GELU derivative,
LayerNorm backward and a finite-difference gradient check.

Each check calls the learner's function on fixed float64 inputs, compares with PyTorch autograd
(the reference), prints a one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint.
"""

from __future__ import annotations

import math

import numpy as np

from lm4f.checks import ExerciseError, compare, run_check


def _rng():
    return np.random.default_rng(5)


def check_softmax_cross_entropy_backward(softmax_cross_entropy_backward) -> None:
    """Exercise 5.1: gradient of the MEAN cross-entropy over a batch with respect to the logits."""
    import torch

    hint = ("With p = softmax(logits) row by row and Y the one-hot targets, "
            "d(mean loss)/d(logits) = (p - Y) / N for N rows. Subtract the row max before exp.")
    rng = _rng()
    for rows, classes, scale in ((4, 3, 1.0), (16, 10, 5.0), (3, 5, 1000.0)):  # the last one overflows a naive exp
        logits = rng.normal(size=(rows, classes)) * scale  # (N, C)
        targets = rng.integers(0, classes, size=rows)  # (N,)
        mine = run_check("softmax_ce_backward", softmax_cross_entropy_backward, logits.copy(), targets.copy(),
                         hint=hint)
        reference_logits = torch.tensor(logits, requires_grad=True)
        torch.nn.functional.cross_entropy(reference_logits, torch.tensor(targets)).backward()
        reference = reference_logits.grad.numpy()
        mine_array = np.asarray(mine, dtype=np.float64) if mine is not None else None
        if mine_array is not None and mine_array.shape == reference.shape and np.allclose(mine_array, reference * rows):
            raise ExerciseError("softmax_ce_backward: your gradient is N times too large. The loss is the MEAN "
                                "over the batch, so divide (p - Y) by N.")
        if mine_array is not None and not np.all(np.isfinite(mine_array)):
            raise ExerciseError("softmax_ce_backward: the result holds nan or inf. Subtract each row's maximum "
                                "logit before np.exp (softmax does not change).")
        compare(f"softmax_ce_backward{logits.shape}", mine, reference, atol=1e-9, hint=hint)


def check_gelu_derivative(gelu_derivative) -> None:
    """Exercise 5.2: derivative of the exact GELU(x) = x * Phi(x)."""
    import torch

    hint = ("GELU(x) = x * Phi(x), with Phi the standard normal CDF and phi its density "
            "exp(-x**2 / 2) / sqrt(2 * pi). Product rule: GELU'(x) = Phi(x) + x * phi(x).")
    x = np.concatenate([np.linspace(-6, 6, 49), _rng().normal(size=20) * 2])  # (69,)
    mine = run_check("gelu_derivative", gelu_derivative, x.copy(), hint=hint)
    reference_x = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(reference_x).sum().backward()
    mine_array = np.asarray(mine, dtype=np.float64) if mine is not None else None
    if mine_array is not None and mine_array.shape == x.shape:
        phi_only = 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
        if np.allclose(mine_array, phi_only, atol=1e-6):
            raise ExerciseError("gelu_derivative: you returned Phi(x) only; GELU is x * Phi(x), so the product rule "
                                "adds x * phi(x).")
    compare("gelu_derivative", mine, reference_x.grad.numpy(), atol=1e-9, hint=hint)


def check_layernorm_backward(layernorm_backward) -> None:
    """Exercise 5.3: LayerNorm backward: (dx, dgamma, dbeta) from dy."""
    import torch

    hint = ("With xhat = (x - mean) / sqrt(var + eps) over the last axis (D features): "
            "dgamma = sum over rows of dy * xhat, dbeta = sum of dy, and with g = dy * gamma, "
            "dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps), means over the last axis.")
    rng = _rng()
    for rows, features in ((2, 4), (6, 16)):
        x = rng.normal(size=(rows, features)) * 3 + 1  # (N, D)
        gamma = rng.normal(size=features)  # (D,)
        beta = rng.normal(size=features)  # (D,)
        dy = rng.normal(size=(rows, features))  # (N, D)
        mine = run_check("layernorm_backward", layernorm_backward, dy.copy(), x.copy(), gamma.copy(), 1e-5, hint=hint)
        if not isinstance(mine, tuple) or len(mine) != 3:
            raise ExerciseError("layernorm_backward: return a tuple (dx, dgamma, dbeta), "
                                f"got {type(mine).__name__}. {hint}")
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        torch.nn.functional.layer_norm(tx, (features,), tg, tb, eps=1e-5).backward(torch.tensor(dy))
        for name, value, reference in zip(("dx", "dgamma", "dbeta"), mine, (tx.grad, tg.grad, tb.grad)):
            compare(f"layernorm_backward {name}", value, reference.numpy(), atol=1e-8, hint=hint)


def check_numerical_gradient(numerical_gradient) -> None:
    """Exercise 5.4: central-difference gradient of a scalar function of an array."""
    hint = ("For each entry i: bump x[i] by +eps and -eps (on a copy, restoring it after), "
            "grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps). Return an array shaped like x.")
    rng = _rng()
    x = rng.normal(size=(3, 4))  # (3, 4)
    matrix = rng.normal(size=(4, 4))

    def f(values):  # a scalar: sum(tanh(x @ A)) + 0.5 * ||x||^2
        return float(np.tanh(values @ matrix).sum() + 0.5 * (values ** 2).sum())

    analytic = (1 - np.tanh(x @ matrix) ** 2) @ matrix.T + x  # (3, 4)
    original = x.copy()
    mine = run_check("numerical_gradient", numerical_gradient, f, x, 1e-5, hint=hint)
    if not np.array_equal(x, original):
        raise ExerciseError("numerical_gradient: x was left changed. Put each entry back after bumping it.")
    mine_array = np.asarray(mine, dtype=np.float64) if mine is not None else None
    if mine_array is not None and mine_array.shape == x.shape and np.allclose(mine_array, 2 * analytic, atol=1e-5):
        raise ExerciseError("numerical_gradient: twice the gradient. Divide the difference by 2 * eps.")
    compare("numerical_gradient", mine, analytic, atol=1e-6, hint=hint)
