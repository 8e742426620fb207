"""Chapter 3 exercises: the solutions pass every check, the untouched stubs fail with a hint."""

from pathlib import Path

import numpy as np
import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch03
from tests.nbtools import namespace_and_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISES = REPO / "exercises" / "ch03_backprop.ipynb"
SOLUTIONS = REPO / "solutions" / "ch03_backprop.ipynb"
N_EXERCISES = 5


def test_solution_notebook_passes_every_check():
    _, checks = namespace_and_checks(SOLUTIONS)
    assert len(checks) == N_EXERCISES + 1  # five exercises and the bonus cell
    failed = [(c.index, repr(c.error)) for c in checks if c.error is not None]
    assert failed == []


def test_untouched_stubs_fail_with_the_exercise_number_and_a_hint():
    _, checks = namespace_and_checks(EXERCISES)
    assert len(checks) == N_EXERCISES + 1
    for number, result in zip(["3.1", "3.2", "3.3", "3.4", "3.5"], checks):
        assert isinstance(result.error, ExerciseError), (number, result.error)
        message = str(result.error)
        assert f"Exercise {number}" in message and "not implemented yet" in message
        assert "Hint:" in message
    assert checks[-1].error is not None  # the bonus cell needs exercises 3.2 and 3.5


def test_stub_and_solution_notebooks_have_the_same_cells_apart_from_the_answers():
    import json

    stub = json.loads(EXERCISES.read_text())["cells"]
    solved = json.loads(SOLUTIONS.read_text())["cells"]
    assert len(stub) == len(solved)
    assert sum("raise NotImplementedError" in "".join(c["source"])
               for c in stub if c["cell_type"] == "code") == N_EXERCISES
    assert not any("raise NotImplementedError" in "".join(c["source"]) for c in solved if c["cell_type"] == "code")
    assert all(not c.get("outputs") for c in stub if c["cell_type"] == "code")  # stored without outputs


# ---- typical wrong answers get a specific, helpful message --------------------------------


def test_stubs_and_hints_ask_for_the_derivation_not_give_the_formula():
    import json

    stub = json.loads(EXERCISES.read_text())["cells"]
    text = "".join("".join(c["source"]) for c in stub)
    for formula in ("1 - tanh", "grad_out @ weight.T", "x.T @ grad_out", "onehot", "momentum * velocity",
                    "(2 eps)", "2 * eps"):
        assert formula not in text, formula
    _, checks = namespace_and_checks(EXERCISES)
    hints = " ".join(str(c.error) for c in checks[:N_EXERCISES])
    for formula in ("1 - tanh", "weight.T", "x.T @", "one-hot labels", "momentum * velocity", "(2 * eps)"):
        assert formula not in hints, formula


def test_wrong_tanh_backward_fails_with_hint():
    with pytest.raises(ExerciseError, match="in terms of tanh"):
        ch03.check_tanh_backward(lambda x, g: g * (1 - x ** 2))  # used x instead of tanh(x)


def _by_autograd(x, grad_out):
    import torch

    t = torch.tensor(x, requires_grad=True)
    torch.tanh(t).backward(torch.tensor(grad_out))
    return t.grad.numpy()


def test_answers_that_let_pytorch_do_the_work_fail():
    import torch

    with pytest.raises(ExerciseError, match="Exercise 3.1: your answer calls torch.Tensor.backward"):
        ch03.check_tanh_backward(_by_autograd)
    assert torch.Tensor.backward.__name__ == "backward"  # put back afterwards
    np.testing.assert_allclose(_by_autograd(np.zeros(2), np.ones(2)), np.ones(2))

    def via_torch_softmax(z, y):
        p = torch.softmax(torch.tensor(z), dim=1).numpy()
        p[np.arange(len(y)), y] -= 1
        return p / len(y)

    with pytest.raises(ExerciseError, match="torch.softmax"):
        ch03.check_softmax_cross_entropy_backward(via_torch_softmax)

    def via_sgd(param, grad, velocity, lr, momentum, weight_decay):
        weights = torch.tensor(param, requires_grad=True)
        optimizer = torch.optim.SGD([weights], lr=lr, momentum=momentum, weight_decay=weight_decay)
        return param, velocity, optimizer

    with pytest.raises(ExerciseError, match="torch.optim.SGD"):
        ch03.check_sgd_momentum_step(via_sgd)  # the name is in the code: refused before it runs

    def exact_gradient_by_autograd(f, x, eps=1e-5):
        t = torch.tensor(x, requires_grad=True)
        (torch.sin(t) * 0).sum().backward()
        return t.grad.numpy()

    with pytest.raises(ExerciseError, match="Exercise 3.5"):
        ch03.check_numerical_gradient(exact_gradient_by_autograd)


def test_linear_backward_wrong_shapes_and_missing_outputs():
    with pytest.raises(ExerciseError, match="three arrays"):
        ch03.check_linear_backward(lambda x, w, g: g @ w.T)
    with pytest.raises(ExerciseError, match="shape"):
        ch03.check_linear_backward(lambda x, w, g: (g @ w.T, x.T @ g, g.sum(axis=1)))  # bias summed on the wrong axis


def _softmax_grad(logits, labels, divide=True, stable=True):
    shifted = logits - logits.max(axis=1, keepdims=True) if stable else logits
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels) if divide else p


def test_softmax_backward_mistakes_are_named():
    with pytest.raises(ExerciseError, match="N times too large"):
        ch03.check_softmax_cross_entropy_backward(lambda z, y: _softmax_grad(z, y, divide=False))
    with np.errstate(all="ignore"), pytest.raises(ExerciseError, match="maximum"):
        ch03.check_softmax_cross_entropy_backward(lambda z, y: _softmax_grad(z, y, stable=False))
    ch03.check_softmax_cross_entropy_backward(_softmax_grad)  # the right answer passes


def test_sgd_step_without_weight_decay_fails():
    def no_decay(param, grad, velocity, lr, momentum, weight_decay):
        velocity = momentum * velocity + grad
        return param - lr * velocity, velocity

    with pytest.raises(ExerciseError, match="penalty"):
        ch03.check_sgd_momentum_step(no_decay)


def test_numerical_gradient_that_forgets_to_restore_x_is_caught():
    def forgets(f, x, eps=1e-5):
        grad = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            x[index] += eps
            up = f(x)
            x[index] -= 2 * eps
            grad[index] = (up - f(x)) / (2 * eps)
        return grad

    with pytest.raises(ExerciseError, match="x was changed"):
        ch03.check_numerical_gradient(forgets)

    def one_sided(f, x, eps=1e-5):
        grad = np.zeros_like(x)
        base = f(x)
        for index in np.ndindex(x.shape):
            shifted = x.copy()
            shifted[index] += eps
            grad[index] = (f(shifted) - base) / eps
        return grad

    with pytest.raises(ExerciseError, match="eps\\*\\*2"):
        ch03.check_numerical_gradient(one_sided)  # error of order eps: too large for the tolerance
