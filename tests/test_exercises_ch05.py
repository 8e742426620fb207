"""Chapter 5 exercises: the solutions pass every check, the untouched stubs fail with a hint, and
the checks catch the usual mistakes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch05
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch05_derivatives.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 5) == [None] * 5


def test_untouched_stubs_fail_with_hints():
    errors = check_errors(REPO / "exercises" / NOTEBOOK, 5)
    assert_untouched_stubs_fail(errors[:4], ("5.1", "5.2", "5.3", "5.4"))
    assert all("Hint:" in str(error) for error in errors[:4])
    assert isinstance(errors[4], NotImplementedError)  # the closing cell needs 5.1 and 5.4


def test_the_stub_notebook_asks_for_derivations_and_repeats_no_chapter_3_exercise():
    cells = json.loads((REPO / "exercises" / NOTEBOOK).read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells)
    for formula in ("Phi(x) + x", "\\overline{g}", "(P - Y)", "2\\epsilon", "6 * n_params", "12 d"):
        assert formula not in text, formula
    for chapter_3 in ("softmax_cross_entropy_backward", "numerical_gradient"):
        assert chapter_3 not in text
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")


# ---- 5.1 the cost of training -------------------------------------------------------------------

def right_flops(batch, d_in, d_out):
    return 2 * batch * d_in * d_out, 4 * batch * d_in * d_out


def right_cost(n_params, n_tokens, peak, mfu, price):
    flops = 6 * n_params * n_tokens
    hours = flops / (peak * mfu) / 3600
    return flops, hours, hours * price


def test_training_cost_check_names_the_usual_mistakes():
    ch05.check_training_cost(right_flops, right_cost)
    with pytest.raises(ExerciseError, match="multiply-add is TWO"):
        ch05.check_training_cost(lambda b, i, o: (b * i * o, 4 * b * i * o), right_cost)
    with pytest.raises(ExerciseError, match="two matmuls"):
        ch05.check_training_cost(lambda b, i, o: (2 * b * i * o, 2 * b * i * o), right_cost)

    def forward_only(n, d, peak, mfu, price):
        return right_cost(n / 3, d, peak, mfu, price)

    def at_peak(n, d, peak, mfu, price):
        return right_cost(n, d, peak, 1.0, price)

    def seconds(n, d, peak, mfu, price):
        flops, hours, _ = right_cost(n, d, peak, mfu, price)
        return flops, hours * 3600, hours * price

    for wrong, message in ((forward_only, "forward pass only"), (at_peak, "peak"), (seconds, "per SECOND")):
        with pytest.raises(ExerciseError, match=message):
            ch05.check_training_cost(right_flops, wrong)


def test_training_cost_answer_that_calls_lm4f_cost_fails():
    from lm4f import cost

    def delegates(n_params, n_tokens, peak, mfu, price):
        return right_cost(n_params, n_tokens, peak, mfu, price) if cost.training_flops(1, 1) else None

    with pytest.raises(ExerciseError, match="Exercise 5.1: your answer calls lm4f.cost.training_flops"):
        ch05.check_training_cost(right_flops, delegates)
    assert cost.training_flops(1, 1) == 6.0  # put back afterwards


def test_the_flop_counter_agrees_with_the_count_the_exercise_asks_for():
    assert ch05._measured_linear_flops(3, 5, 7) == right_flops(3, 5, 7)


# ---- 5.2 GELU ----------------------------------------------------------------------------------

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


def test_gelu_by_autograd_fails():
    import torch

    def by_autograd(x):
        t = torch.tensor(x, requires_grad=True)
        (grad,) = torch.autograd.grad(torch.nn.functional.gelu(t).sum(), t)
        return grad.numpy()

    with pytest.raises(ExerciseError, match="Exercise 5.2: your answer calls torch.autograd.grad"):
        ch05.check_gelu_derivative(by_autograd)


# ---- 5.3 LayerNorm -----------------------------------------------------------------------------

def test_layernorm_check_catches_dropping_the_mean_terms_and_autograd():
    import torch

    def only_scaled(dy, x, gamma, eps):  # treats mean and variance as constants
        x_hat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
        return dy * gamma / np.sqrt(x.var(-1, keepdims=True) + eps), (dy * x_hat).sum(0), dy.sum(0)

    def by_autograd(dy, x, gamma, eps):
        tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(gamma, requires_grad=True)
        torch.nn.functional.layer_norm(tx, (x.shape[-1],), tg, None, eps).backward(torch.tensor(dy))
        return tx.grad.numpy(), tg.grad.numpy(), dy.sum(0)

    with pytest.raises(ExerciseError, match="dx"):
        ch05.check_layernorm_backward(only_scaled)
    with pytest.raises(ExerciseError, match="tuple"):
        ch05.check_layernorm_backward(lambda dy, x, gamma, eps: dy)
    with pytest.raises(ExerciseError, match="Exercise 5.3: your answer calls torch.nn.functional.layer_norm"):
        ch05.check_layernorm_backward(by_autograd)


# ---- 5.4 parameter count -----------------------------------------------------------------------

def gpt_count(vocab, context, d, heads, layers, tied=True, positions=True, biases=True):
    b = 1 if biases else 0
    block = 4 * d + 3 * d * d + 3 * d * b + d * d + d * b + 8 * d * d + 5 * d * b
    total = vocab * d + (context * d if positions else 0) + layers * block + 2 * d
    return total if tied else total + vocab * d


def test_parameter_count_check_passes_the_formula_and_names_the_usual_mistakes():
    ch05.check_gpt_parameter_count(gpt_count)
    with pytest.raises(ExerciseError, match="shares its weight"):
        ch05.check_gpt_parameter_count(lambda *c: gpt_count(*c, tied=False))
    with pytest.raises(ExerciseError, match="position embeddings"):
        ch05.check_gpt_parameter_count(lambda *c: gpt_count(*c, positions=False))
    with pytest.raises(ExerciseError, match="off by"):
        ch05.check_gpt_parameter_count(lambda *c: gpt_count(*c, biases=False))
    with pytest.raises(ExerciseError, match="off by"):   # heads do not add parameters
        ch05.check_gpt_parameter_count(lambda v, t, d, h, n: gpt_count(v, t, d, h, n) + h * d)


def test_parameter_count_by_building_the_module_or_calling_lm4f_cost_fails():
    from lm4f.cost import gpt2_params
    from lm4f.gpt import GPT, GPTConfig

    def builds(vocab, context, d, heads, layers):
        return sum(p.numel() for p in GPT(GPTConfig(vocab, context, layers, heads, d)).parameters())

    with pytest.raises(ExerciseError, match="torch.nn.Module.__init__"):
        ch05.check_gpt_parameter_count(builds)
    with pytest.raises(ExerciseError, match="lm4f.cost.gpt2_params"):
        ch05.check_gpt_parameter_count(lambda v, t, d, h, n: gpt2_params(v, d, n, t))
    assert ch05.module_parameter_count(50257, 1024, 768, 12, 12) == gpt2_params(50257, 768, 12, 1024) == 124_439_808
