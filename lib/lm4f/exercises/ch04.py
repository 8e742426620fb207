"""Checks for exercises/ch04_attention.ipynb: scaled dot-product attention, the causal mask, and
splitting into heads (and back).

Each check calls the learner's function on fixed inputs, compares with PyTorch's own result, prints
a one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the answer is wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lm4f.checks import ExerciseError, compare, run_check


def _inputs(seed: int = 4):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 5, 8, generator=generator)     # (B, nh, Tq, hs)
    k = torch.randn(2, 3, 7, 8, generator=generator)     # (B, nh, Tk, hs)
    v = torch.randn(2, 3, 7, 6, generator=generator)     # (B, nh, Tk, hv)
    return q, k, v


def check_attention(scaled_dot_product_attention) -> None:
    """Exercise 4.1: softmax(q k^T / sqrt(d)) v, with an optional boolean mask (True = may attend)."""
    hint = ("Compute scores = q @ k.transpose(-2, -1) / sqrt(q.size(-1)) (shape (..., Tq, Tk)); where "
            "mask is False set the score to -inf; softmax over the LAST dimension (the keys); multiply by v.")
    q, k, v = _inputs()
    mine = run_check("attention", scaled_dot_product_attention, q, k, v, hint=hint)
    if mine is not None and tuple(mine.shape) == tuple(q.shape):
        raise ExerciseError("attention: your output has the shape of q, but its last dimension must be the "
                            f"width of v ({v.size(-1)}): multiply the weights (..., Tq, Tk) by v (..., Tk, hv).")
    unscaled = F.scaled_dot_product_attention(q * (8 ** 0.5), k, v)
    if mine is not None and mine.shape == unscaled.shape and torch.allclose(mine, unscaled, atol=1e-5):
        raise ExerciseError("attention: you forgot to divide the scores by sqrt(d), d = q.size(-1).")
    compare("attention", mine, F.scaled_dot_product_attention(q, k, v), atol=1e-5, hint=hint)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(5)) > 0.4
    mask[:, 0] = True                                     # every query may attend to something
    mine = run_check("attention with mask", scaled_dot_product_attention, q, k, v, mask, hint=hint)
    compare("attention with mask", mine, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            atol=1e-5, hint=hint + " With a mask: scores.masked_fill(~mask, float('-inf')).")


def check_causal_mask(causal_mask) -> None:
    """Exercise 4.2: a (T, T) boolean mask, True where query i may attend to key j (j <= i)."""
    hint = "Position i may read positions 0..i: True on and below the diagonal (torch.tril), dtype torch.bool."
    for T in (1, 4, 9):
        mine = run_check("causal_mask", causal_mask, T, hint=hint)
        if mine is None or not isinstance(mine, torch.Tensor):
            raise ExerciseError(f"causal_mask: return a torch.Tensor, got {type(mine).__name__}. {hint}")
        if mine.dtype != torch.bool:
            raise ExerciseError(f"causal_mask: dtype {mine.dtype}, expected torch.bool (True = may attend). {hint}")
        reference = torch.ones(T, T, dtype=torch.bool).tril()
        if T > 1 and mine.shape == reference.shape and torch.equal(mine, reference.T):
            raise ExerciseError("causal_mask: your mask lets each position read the FUTURE (upper triangle). "
                                "Rows are queries, columns are keys: keep j <= i.")
        compare(f"causal_mask({T})", mine.double(), reference.double(), atol=0, rtol=0, hint=hint)


def check_heads(split_heads, merge_heads) -> None:
    """Exercise 4.3: (B, T, C) -> (B, nh, T, C // nh) and back."""
    hint = ("split: x.view(B, T, n_head, C // n_head).transpose(1, 2). merge: the inverse, "
            "y.transpose(1, 2).reshape(B, T, nh * hs). A plain reshape to (B, nh, T, hs) mixes tokens.")
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(6))   # (B, T, C)
    mine = run_check("split_heads", split_heads, x, 3, hint=hint)
    reference = x.view(2, 5, 3, 4).transpose(1, 2)
    if mine is not None and tuple(mine.shape) == (2, 3, 5, 4) and torch.equal(mine, x.reshape(2, 3, 5, 4)):
        raise ExerciseError("split_heads: right shape, wrong content: reshape(B, nh, T, hs) mixes positions "
                            "between heads. View as (B, T, nh, hs) first, then swap T and nh.")
    compare("split_heads", mine, reference, atol=0, rtol=0, hint=hint)
    merged = run_check("merge_heads", merge_heads, reference, hint=hint)
    compare("merge_heads", merged, x, atol=0, rtol=0, hint=hint)
