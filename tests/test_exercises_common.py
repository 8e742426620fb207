"""lm4f.exercises.common: refusing delegation during a check, and verdicts that read the same on every CPU."""

import numpy as np
import pytest
import torch

from lm4f.checks import ExerciseError
from lm4f.exercises.common import AUTOGRAD, agree, forbid, forbid_names, names_used


def test_forbid_refuses_module_functions_and_methods_then_puts_them_back():
    softmax, backward = torch.nn.functional.softmax, torch.Tensor.backward
    with forbid("9.9", ["torch.nn.functional.softmax", *AUTOGRAD]):
        with pytest.raises(ExerciseError, match="Exercise 9.9: your answer calls torch.nn.functional.softmax"):
            torch.nn.functional.softmax(torch.zeros(3), dim=0)
        with pytest.raises(ExerciseError, match="torch.Tensor.backward"):
            torch.zeros(2, requires_grad=True).sum().backward()
        with pytest.raises(ExerciseError, match="torch.autograd.grad"):
            torch.autograd.grad(torch.zeros(1, requires_grad=True).sum(), [])
        assert torch.softmax(torch.zeros(2), 0).tolist() == [0.5, 0.5]  # not named: still works
    assert torch.nn.functional.softmax is softmax and torch.Tensor.backward is backward
    x = torch.ones(2, requires_grad=True)
    (2 * x).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_forbid_puts_back_after_an_error_and_an_inherited_method_stays_inherited():
    assert "softmax" not in torch.Tensor.__dict__  # defined on the C base class
    with pytest.raises(ValueError), forbid("9.9", ["torch.Tensor.softmax", "no.such.module.function"]):
        raise ValueError("learner's bug")
    assert "softmax" not in torch.Tensor.__dict__
    assert torch.zeros(2).softmax(0).tolist() == [0.5, 0.5]


def test_names_used_sees_globals_attributes_nested_code_and_closures():
    from torch.optim import Adam

    def answer(params):
        def inner():
            return torch.optim.SGD(params, lr=0.1)

        return inner, Adam

    assert {"SGD", "optim", "Adam"} <= names_used(answer)
    with pytest.raises(ExerciseError, match="torch.optim.SGD"):
        forbid_names("9.9", answer, ["torch.optim.SGD"])
    forbid_names("9.9", answer, ["torch.optim.RMSprop"])  # not used: no error
    assert names_used(len) == set()  # a builtin has no Python code to read


def test_agree_prints_the_tolerance_met_or_the_wrong_difference(capsys):
    agree("same", np.ones(3), np.ones(3) + 1e-12, atol=1e-9)
    agree("bits", np.arange(3), np.arange(3), atol=0, rtol=0)
    assert capsys.readouterr().out.splitlines() == [
        f"{'same':28s} OK     within tolerance (atol 1e-09, rtol 1e-05)",
        f"{'bits':28s} OK     exactly equal",
    ]
    with pytest.raises(ExerciseError, match="above tolerance"):
        agree("off", np.ones(3), np.zeros(3), atol=1e-9, hint="Hint: look again.")
    assert "WRONG" in capsys.readouterr().out
