"""Checks for exercises/ch03_backprop.ipynb: backward rules, an optimiser step, a gradient check.

Each ``check_*`` calls the learner's function on fixed random inputs, compares the result with
PyTorch autograd (float64), prints a one-line verdict and raises
:class:`lm4f.checks.ExerciseError` with a hint when it is wrong or not written yet. The hints point
at the derivation, not at the answer. While the learner's function runs, autograd (and, per
exercise, the PyTorch function being re-implemented) raises, so an answer that delegates fails.
"""

from __future__ import annotations

import numpy as np

from lm4f.checks import ExerciseError, run_check
from lm4f.exercises.common import agree, AUTOGRAD, forbid, forbid_names

__all__ = [
    "check_tanh_backward",
    "check_linear_backward",
    "check_softmax_cross_entropy_backward",
    "check_sgd_momentum_step",
    "check_numerical_gradient",
]


_SOFTMAX = ("torch.nn.functional.softmax", "torch.nn.functional.log_softmax", "torch.nn.functional.cross_entropy",
            "torch.softmax", "torch.log_softmax", "scipy.special.softmax", "scipy.special.log_softmax")
_SGD = ("torch.optim.SGD",)


def _torch():
    import torch

    return torch


def check_tanh_backward(tanh_backward) -> None:
    """Exercise 3.1: ``tanh_backward(x, grad_out) -> grad_x``."""
    torch = _torch()
    rng = np.random.default_rng(31)
    x, grad_out = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    hint = ("Hint: differentiate tanh(x) = (e^x - e^-x) / (e^x + e^-x) with the quotient rule and write the "
            "result in terms of tanh(x) itself; then apply the chain rule, elementwise.")
    with forbid("3.1", AUTOGRAD):
        mine = run_check("tanh_backward", tanh_backward, x.copy(), grad_out.copy(), hint=hint)
    reference = torch.tensor(x, requires_grad=True)
    torch.tanh(reference).backward(torch.tensor(grad_out))
    agree("tanh_backward", mine, reference.grad, hint=hint)


def check_linear_backward(linear_backward) -> None:
    """Exercise 3.2: ``linear_backward(x, weight, grad_out) -> (grad_x, grad_weight, grad_bias)``."""
    torch = _torch()
    rng = np.random.default_rng(32)
    x, weight = rng.normal(size=(6, 4)), rng.normal(size=(4, 3))  # (N, D), (D, H)
    grad_out = rng.normal(size=(6, 3))  # (N, H)
    hint = ("Hint: write out[n, h] as a sum over d, differentiate it with respect to one x[n, d], one "
            "weight[d, h] and one bias[h], and sum over everything that entry touched. Each gradient has the "
            "shape of its variable: x (N, D), weight (D, H), bias (H,).")
    with forbid("3.2", AUTOGRAD):
        result = run_check("linear_backward", linear_backward, x.copy(), weight.copy(), grad_out.copy(),
                           hint=hint)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise ExerciseError(f"linear_backward: return three arrays (grad_x, grad_weight, grad_bias), "
                            f"got {type(result).__name__}. {hint}")
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    tb = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (tx @ tw + tb).backward(torch.tensor(grad_out))
    for name, mine, reference in zip(("grad_x", "grad_weight", "grad_bias"), result, (tx.grad, tw.grad, tb.grad)):
        agree(f"linear_backward {name}", mine, reference, hint=hint)


def check_softmax_cross_entropy_backward(softmax_cross_entropy_backward) -> None:
    """Exercise 3.3: ``softmax_cross_entropy_backward(logits, labels) -> d mean_loss / d logits``."""
    torch = _torch()
    rng = np.random.default_rng(33)
    logits, labels = rng.normal(size=(8, 5)) * 3, rng.integers(0, 5, size=8)
    hint = ("Hint: for one row, write the loss as log(sum_j exp(z_j)) - z_label and differentiate it with "
            "respect to z_k (two cases: k is the label, or not); then account for the mean over N rows. "
            "Softmax does not change when you add the same constant to every logit of a row.")
    with forbid("3.3", AUTOGRAD + _SOFTMAX):
        mine = run_check("softmax_cross_entropy_backward", softmax_cross_entropy_backward, logits.copy(),
                         labels.copy(), hint=hint)
    reference = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(reference, torch.tensor(labels)).backward()
    if mine is not None and np.shape(mine) == reference.shape:
        scaled = np.asarray(mine) / len(labels)
        if np.allclose(scaled, reference.grad.numpy(), atol=1e-9):
            raise ExerciseError("softmax_cross_entropy_backward: your gradient is N times too large. "
                                "Divide by N: the loss is the mean over the batch, not the sum.")
    agree("softmax_cross_entropy_backward", mine, reference.grad, hint=hint)
    huge = np.array([[1000.0, 0.0, -1000.0]])
    with forbid("3.3", AUTOGRAD + _SOFTMAX):
        stable = run_check("softmax_cross_entropy_backward", softmax_cross_entropy_backward, huge, np.array([0]),
                           hint=hint)
    if not np.all(np.isfinite(stable)):
        raise ExerciseError("softmax_cross_entropy_backward: logits of size 1000 give inf/nan. "
                            "Subtract each row's maximum before np.exp (it does not change softmax).")


def check_sgd_momentum_step(sgd_momentum_step) -> None:
    """Exercise 3.4: ``sgd_momentum_step(param, grad, velocity, lr, momentum, weight_decay) -> (param, velocity)``."""
    torch = _torch()
    rng = np.random.default_rng(34)
    start, target = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    lr, momentum, weight_decay = 0.1, 0.9, 0.01
    hint = ("Hint: differentiate the penalty (weight_decay / 2) * ||param||^2 and add it to grad; the "
            "velocity's newest gradient enters with weight 1 and every older one shrinks by a factor momentum "
            "per step, so the new velocity needs only the old one; the parameter moves against the velocity, "
            "times lr. Return (param, velocity).")
    forbid_names("3.4", sgd_momentum_step, _SGD)
    param, velocity = start.copy(), np.zeros_like(start)
    reference = torch.tensor(start.copy(), requires_grad=True)
    optimizer = torch.optim.SGD([reference], lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(4):
        grad = 2 * (param - target)  # gradient of sum((param - target)^2)
        with forbid("3.4", _SGD):
            result = run_check("sgd_momentum_step", sgd_momentum_step, param.copy(), grad, velocity.copy(), lr,
                               momentum, weight_decay, hint=hint)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ExerciseError(f"sgd_momentum_step: return (param, velocity), got {type(result).__name__}. {hint}")
        param, velocity = (np.asarray(r, dtype=np.float64) for r in result)
        optimizer.zero_grad()
        ((reference - torch.tensor(target)) ** 2).sum().backward()
        optimizer.step()
    agree("sgd_momentum_step (4 steps)", param, reference.detach(), hint=hint)


def check_numerical_gradient(numerical_gradient) -> None:
    """Exercise 3.5: ``numerical_gradient(f, x, eps) -> array like x`` by central differences."""
    rng = np.random.default_rng(35)
    x = rng.normal(size=(3, 2))
    weights = rng.normal(size=(3, 2))

    def f(values):
        return float(np.sum(np.sin(values) * weights) + np.sum(values ** 3))

    exact = np.cos(x) * weights + 3 * x ** 2
    hint = ("Hint: the derivative is a limit of (change in f) / (change in one entry). Move one entry at a "
            "time (np.ndindex(x.shape) visits them all), choose the difference whose error shrinks like "
            "eps**2 (Taylor-expand f on both sides to see which), and put the entry back.")
    before = x.copy()
    with forbid("3.5", AUTOGRAD + ("scipy.optimize.approx_fprime", "numpy.gradient")):
        mine = run_check("numerical_gradient", numerical_gradient, f, x, 1e-5, hint=hint)
    if not np.array_equal(x, before):
        raise ExerciseError("numerical_gradient: x was changed. Put every x[i] back after perturbing it.")
    agree("numerical_gradient", mine, exact, atol=1e-6, hint=hint)
