"""Chapter 4 exercises: the solutions pass every check, the untouched stubs fail with a hint,
and the checks catch the typical wrong answers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lm4f.checks import ExerciseError
from lm4f.exercises import ch04
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch04_attention.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 6) == [None] * 6


def test_untouched_stubs_fail_with_hints():
    errors = check_errors(REPO / "exercises" / NOTEBOOK, 6)
    assert_untouched_stubs_fail(errors[:5], ("4.1", "4.2", "4.3", "4.4", "4.5"))
    assert all("Hint:" in str(error) for error in errors[:5])
    assert isinstance(errors[5], NotImplementedError)


def test_the_stub_notebook_asks_for_derivations_not_formulas():
    cells = json.loads((REPO / "exercises" / NOTEBOOK).read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells)
    for formula in ("\\frac{QK^\\top}{\\sqrt{d}}", "sqrt(q.size(-1))", "1 - beta1 ** t", "1 - \\beta_1^t",
                    "tril", "view(B, T"):
        assert formula not in text, formula
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")


def attention_without_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention_softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v


def attention_ignoring_mask(q, k, v, mask=None):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ v


def test_attention_check_catches_typical_mistakes():
    with pytest.raises(ExerciseError, match="sqrt"):
        ch04.check_attention(attention_without_scale)
    with pytest.raises(ExerciseError, match="max difference"):
        ch04.check_attention(attention_softmax_over_queries)
    with pytest.raises(ExerciseError, match="attention with mask"):
        ch04.check_attention(attention_ignoring_mask)


def test_causal_mask_check_catches_future_and_dtype():
    with pytest.raises(ExerciseError, match="FUTURE"):
        ch04.check_causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).triu())
    with pytest.raises(ExerciseError, match="torch.bool"):
        ch04.check_causal_mask(lambda T: torch.ones(T, T).tril())


def test_heads_check_catches_plain_reshape():
    def plain_reshape(x, n_head):
        B, T, C = x.shape
        return x.reshape(B, n_head, T, C // n_head)

    def merge(y):
        B, nh, T, hs = y.shape
        return y.transpose(1, 2).reshape(B, T, nh * hs)

    with pytest.raises(ExerciseError, match="mixes positions"):
        ch04.check_heads(plain_reshape, merge)


def test_answers_that_call_the_pytorch_function_they_rewrite_fail():
    import torch.nn.functional as F

    def delegates(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with pytest.raises(ExerciseError, match="Exercise 4.1: your answer calls torch.nn.functional.scaled_dot"):
        ch04.check_attention(delegates)

    def helper(q, k, v, mask=None):  # the name is hidden in a helper: only the run-time guard sees it
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with pytest.raises(ExerciseError, match="scaled_dot_product_attention"):
        ch04.check_attention(lambda q, k, v, mask=None: helper(q, k, v, mask))
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # put back


# ---- 4.4 Adam ---------------------------------------------------------------------------------

def adam(param, grad, m, v, t, lr, beta1, beta2, eps, correct=True, eps_inside=False):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad ** 2
    m_hat, v_hat = (m / (1 - beta1 ** t), v / (1 - beta2 ** t)) if correct else (m, v)
    denominator = np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps
    return param - lr * m_hat / denominator, m, v


def test_adam_check_passes_the_right_update_and_names_the_missing_bias_correction():
    ch04.check_adam_step(adam)
    with pytest.raises(ExerciseError, match="WITHOUT bias correction"):
        ch04.check_adam_step(lambda *a: adam(*a, correct=False))
    with pytest.raises(ExerciseError, match="max difference"):
        ch04.check_adam_step(lambda *a: adam(*a, eps_inside=True))  # eps under the root: off for eps=1e-3
    with pytest.raises(ExerciseError, match="NEW running average m"):
        ch04.check_adam_step(lambda p, g, m, v, *rest: (adam(p, g, m, v, *rest)[0], m, adam(p, g, m, v, *rest)[2]))


def _optimizer_helper(param, lr):
    return torch.optim.Adam([torch.tensor(param, requires_grad=True)], lr=lr)


def test_adam_answer_that_uses_torch_optim_fails():
    def delegates(param, grad, m, v, t, lr, beta1, beta2, eps):
        _optimizer_helper(param, lr)
        return adam(param, grad, m, v, t, lr, beta1, beta2, eps)

    with pytest.raises(ExerciseError, match="Exercise 4.4: your answer calls torch.optim.Adam"):
        ch04.check_adam_step(delegates)
    assert _optimizer_helper(np.zeros(2), 0.1).__class__.__name__ == "Adam"  # put back afterwards


# ---- 4.5 sampling -----------------------------------------------------------------------------

def sampler(top_p_rule="reach", renormalise=True, uniform=False):
    def sample(logits, n, top_k=None, top_p=None, generator=None):
        probs = torch.softmax(logits.double(), dim=-1)
        order = torch.argsort(probs, descending=True)
        ranked = probs[order].clone()
        if top_k is not None:
            ranked[top_k:] = 0
        if top_p is not None:
            scaled = ranked / ranked.sum() if renormalise else ranked
            cumulative = torch.cumsum(scaled, 0)
            drop = cumulative - scaled >= top_p if top_p_rule == "reach" else cumulative > top_p
            drop[0] = False                                        # always keep the most likely token
            ranked[drop] = 0
        kept = torch.zeros_like(probs)
        kept[order] = ranked
        if uniform:
            kept = (kept > 0).double()
        return torch.multinomial(kept, n, replacement=True, generator=generator)
    return sample


def test_sampling_check_passes_a_right_sampler_and_fails_the_usual_mistakes():
    ch04.check_sampling(sampler())
    with pytest.raises(ExerciseError, match="top_p"):
        ch04.check_sampling(sampler(top_p_rule="stay below"))   # drops the token that crosses p
    with pytest.raises(ExerciseError, match="top_k=6, top_p=0.8"):
        ch04.check_sampling(sampler(renormalise=False))        # top-p on the unfiltered probabilities
    with pytest.raises(ExerciseError, match="wrong frequencies"):
        ch04.check_sampling(sampler(uniform=True))             # right tokens, uniform draws
    with pytest.raises(ExerciseError, match="shape"):
        ch04.check_sampling(lambda logits, n, top_k=None, top_p=None, generator=None: torch.zeros(1, n).long())


def test_reference_distribution_edge_cases():
    logits = torch.tensor([2.0, 1.0, 0.0, float("-inf")])
    probs = torch.softmax(logits.double(), 0)
    assert torch.equal(ch04.reference_distribution(logits, top_k=1) > 0, torch.tensor([True, False, False, False]))
    assert torch.allclose(ch04.reference_distribution(logits), probs)
    assert torch.allclose(ch04.reference_distribution(logits, top_k=10, top_p=1.0), probs)
    # top_p just above the first token's probability keeps exactly the first two
    two = ch04.reference_distribution(logits, top_p=float(probs[0]) + 1e-6)
    assert torch.equal(two > 0, torch.tensor([True, True, False, False]))
    assert torch.allclose(two[:2], probs[:2] / probs[:2].sum())


def test_sampling_answer_that_calls_the_library_sampler_fails():
    import lm4f.gpt

    def delegates(logits, n, top_k=None, top_p=None, generator=None):
        probs = lm4f.gpt.next_token_probs(logits, 1.0, top_k, top_p)
        return torch.multinomial(probs, n, replacement=True, generator=generator)

    with pytest.raises(ExerciseError, match="Exercise 4.5: your answer calls lm4f.gpt.next_token_probs"):
        ch04.check_sampling(delegates)
