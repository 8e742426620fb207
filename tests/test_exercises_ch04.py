"""Chapter 4 exercises: the solutions pass every check, the untouched stubs fail with a hint,
and the checks catch the typical wrong answers."""

import math
from pathlib import Path

import pytest
import torch

from lm4f.checks import ExerciseError
from lm4f.exercises import ch04
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch04_attention.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 4) == [None, None, None, None]


def test_untouched_stubs_fail_with_hints():
    errors = check_errors(REPO / "exercises" / NOTEBOOK, 4)
    assert_untouched_stubs_fail(errors[:3], ("4.1", "4.2", "4.3"))
    assert isinstance(errors[3], NotImplementedError)


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
