"""Checks for exercises/ch04_attention.ipynb: scaled dot-product attention, the causal mask,
splitting into heads (and back), Adam's update, and top-k / top-p sampling.

Each check calls the learner's function on fixed inputs, compares with PyTorch's own result, prints
a one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the answer is wrong.
The hints point at the derivation, not at the answer; while the learner's function runs, the
PyTorch function it re-implements raises, so an answer that delegates to it fails.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from lm4f.checks import ExerciseError, run_check
from lm4f.exercises.common import agree, forbid, forbid_names

_ATTENTION = ("torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.multi_head_attention_forward",
              "torch.nn.MultiheadAttention", "lm4f.attention.attention")
_ADAM = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.adam.adam", "torch.optim.Adamax",
         "torch.optim.NAdam", "torch.optim.RAdam")
_SAMPLERS = ("transformers.TopKLogitsWarper", "transformers.TopPLogitsWarper",
             "transformers.generation.logits_process.TopKLogitsWarper",
             "transformers.generation.logits_process.TopPLogitsWarper", "lm4f.gpt.GPT.generate",
             "lm4f.gpt.next_token_probs")


def _inputs(seed: int = 4):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 5, 8, generator=generator)     # (B, nh, Tq, hs)
    k = torch.randn(2, 3, 7, 8, generator=generator)     # (B, nh, Tk, hs)
    v = torch.randn(2, 3, 7, 6, generator=generator)     # (B, nh, Tk, hv)
    return q, k, v


def check_attention(scaled_dot_product_attention) -> None:
    """Exercise 4.1: softmax(q k^T / sqrt(d)) v, with an optional boolean mask (True = may attend)."""
    hint = ("Hint: each query scores every key with a dot product, the scores become weights that sum to 1 "
            "over the keys, and the output is the weighted sum of the values. Work out the variance of a dot "
            "product of two d-vectors with independent unit-variance entries to find the scale. A disallowed "
            "key must get weight exactly 0: what score does that need before the softmax?")
    q, k, v = _inputs()
    forbid_names("4.1", scaled_dot_product_attention, _ATTENTION[:2])
    with forbid("4.1", _ATTENTION):
        mine = run_check("attention", scaled_dot_product_attention, q, k, v, hint=hint)
    if mine is not None and tuple(mine.shape) == tuple(q.shape):
        raise ExerciseError("attention: your output has the shape of q, but its last dimension must be the "
                            f"width of v ({v.size(-1)}): multiply the weights (..., Tq, Tk) by v (..., Tk, hv).")
    unscaled = F.scaled_dot_product_attention(q * (8 ** 0.5), k, v)
    if mine is not None and mine.shape == unscaled.shape and torch.allclose(mine, unscaled, atol=1e-5):
        raise ExerciseError("attention: you forgot to divide the scores by sqrt(d), d = q.size(-1).")
    agree("attention", mine, F.scaled_dot_product_attention(q, k, v), atol=1e-5, hint=hint)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(5)) > 0.4
    mask[:, 0] = True                                     # every query may attend to something
    with forbid("4.1", _ATTENTION):
        mine = run_check("attention with mask", scaled_dot_product_attention, q, k, v, mask, hint=hint)
    agree("attention with mask", mine, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            atol=1e-5, hint=hint + " With a mask, the masked keys must get weight 0.")


def check_causal_mask(causal_mask) -> None:
    """Exercise 4.2: a (T, T) boolean mask, True where query i may attend to key j (j <= i)."""
    hint = ("Hint: rows are queries (positions i), columns are keys (positions j). Which pairs (i, j) may a "
            "model that predicts token i + 1 from tokens 0..i look at? Return dtype torch.bool.")
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
        agree(f"causal_mask({T})", mine.double(), reference.double(), atol=0, rtol=0, hint=hint)


def check_heads(split_heads, merge_heads) -> None:
    """Exercise 4.3: (B, T, C) -> (B, nh, T, C // nh) and back."""
    hint = ("Hint: the C features of one token are laid out as n_head consecutive groups of C // n_head. "
            "First expose that grouping without moving data, then move the head axis in front of time; "
            "merging undoes the two steps in reverse order.")
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(6))   # (B, T, C)
    mine = run_check("split_heads", split_heads, x, 3, hint=hint)
    reference = x.view(2, 5, 3, 4).transpose(1, 2)
    if mine is not None and tuple(mine.shape) == (2, 3, 5, 4) and torch.equal(mine, x.reshape(2, 3, 5, 4)):
        raise ExerciseError("split_heads: right shape, wrong content: reshape(B, nh, T, hs) mixes positions "
                            "between heads. View as (B, T, nh, hs) first, then swap T and nh.")
    agree("split_heads", mine, reference, atol=0, rtol=0, hint=hint)
    merged = run_check("merge_heads", merge_heads, reference, hint=hint)
    agree("merge_heads", merged, x, atol=0, rtol=0, hint=hint)


# ---------------------------------------------------------------------------------------------
# Exercise 4.4: Adam, step for step against torch.optim.Adam
# ---------------------------------------------------------------------------------------------
def _adam_without_bias_correction(param, grad, m, v, t, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad ** 2
    return param - lr * m / (np.sqrt(v) + eps), m, v


def check_adam_step(adam_step) -> None:
    """Exercise 4.4: ``adam_step(param, grad, m, v, t, lr, beta1, beta2, eps) -> (param, m, v)``.

    Twelve steps of the learner's update on a badly scaled quadratic must match twelve steps of
    ``torch.optim.Adam`` (float64) to 1e-10, for two settings of the betas.
    """
    hint = ("Hint: m and v are running averages of the gradient and of its square, both started at 0. With a "
            "constant gradient g, write m after t steps as a sum and add up the geometric series: the factor "
            "you find is what m must be divided by to estimate g without bias (v likewise). The step moves "
            "each coordinate by lr times (estimate of g) / (sqrt(estimate of g^2) + eps). t counts from 1.")
    forbid_names("4.4", adam_step, [name for name in _ADAM if name != "torch.optim.adam.adam"])  # "adam" is a fine name
    rng = np.random.default_rng(44)
    scales = np.array([[100.0, 1.0, 0.01], [10.0, 0.1, 1.0]])          # (2, 3): curvatures 1e4 apart
    target = rng.normal(size=(2, 3))
    for lr, beta1, beta2, eps in ((0.1, 0.9, 0.999, 1e-8), (0.05, 0.5, 0.9, 1e-3)):
        start = rng.normal(size=(2, 3))
        reference = torch.tensor(start.copy(), requires_grad=True)
        optimizer = torch.optim.Adam([reference], lr=lr, betas=(beta1, beta2), eps=eps)
        param, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
        shadow = (start.copy(), np.zeros_like(start), np.zeros_like(start))   # the same without correction
        for t in range(1, 13):
            grad = 2 * scales * (param - target)                                # d/dp sum(scales (p - target)^2)
            with forbid("4.4", _ADAM):
                result = run_check("adam_step", adam_step, param.copy(), grad.copy(), m.copy(), v.copy(), t, lr,
                                   beta1, beta2, eps, hint=hint)
            if not isinstance(result, (tuple, list)) or len(result) != 3:
                raise ExerciseError(f"adam_step: return (param, m, v), got {type(result).__name__}. {hint}")
            param, m, v = (np.asarray(r, dtype=np.float64) for r in result)
            shadow_grad = 2 * scales * (shadow[0] - target)
            shadow = _adam_without_bias_correction(*shadow[:1], shadow_grad, *shadow[1:], t, lr, beta1, beta2, eps)
            optimizer.zero_grad()
            (torch.tensor(scales) * (reference - torch.tensor(target)) ** 2).sum().backward()
            optimizer.step()
            state = optimizer.state[reference]
            if param.shape == start.shape and not np.allclose(param, reference.detach().numpy(), atol=1e-10):
                if np.allclose(param, shadow[0], atol=1e-10):
                    raise ExerciseError(f"adam_step: step {t} matches Adam WITHOUT bias correction. At step 1, m "
                                        f"is only (1 - beta1) g: what must it be divided by? {hint}")
                agree(f"adam_step param (step {t})", param, reference.detach(), atol=1e-10, hint=hint)
            for name, mine, theirs in (("m", m, state["exp_avg"]), ("v", v, state["exp_avg_sq"])):
                if mine.shape != start.shape or not np.allclose(mine, theirs.numpy(), atol=1e-10):
                    agree(f"adam_step {name} (step {t})", mine, theirs, atol=1e-10,
                            hint=f"Return the NEW running average {name}, before any correction. {hint}")
        agree(f"adam_step, 12 steps, betas ({beta1}, {beta2})", param, reference.detach(), atol=1e-10, hint=hint)


# ---------------------------------------------------------------------------------------------
# Exercise 4.5: top-k and top-p (nucleus) sampling
# ---------------------------------------------------------------------------------------------
def _kept(logits: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """The reference: a boolean mask of the tokens that may be drawn (top-k first, then top-p)."""
    probs = torch.softmax(logits.double(), dim=-1)
    order = torch.argsort(probs, descending=True, stable=True)
    keep = torch.isfinite(logits)
    if top_k is not None:
        keep_sorted = torch.zeros_like(keep)
        keep_sorted[order[:top_k]] = True
        keep &= keep_sorted
    if top_p is not None:
        kept_probs = torch.where(keep, probs, torch.zeros_like(probs))
        kept_probs = kept_probs / kept_probs.sum()
        sorted_probs = kept_probs[order]
        before = torch.cumsum(sorted_probs, 0) - sorted_probs        # mass of the tokens ranked above
        nucleus = torch.zeros_like(keep)
        nucleus[order[before < top_p]] = True                       # keep until the mass reaches top_p
        keep &= nucleus
    return keep


def reference_distribution(logits: torch.Tensor, top_k=None, top_p=None) -> torch.Tensor:
    """The probabilities a correct sampler draws from: softmax over the kept tokens, 0 elsewhere."""
    keep = _kept(logits, top_k, top_p)
    probs = torch.softmax(logits.double(), dim=-1) * keep
    return probs / probs.sum()


def _draw(sample, logits, n, top_k, top_p, seed, hint):
    generator = torch.Generator().manual_seed(seed)
    with forbid("4.5", _SAMPLERS):
        ids = run_check("sample", sample, logits.clone(), n, top_k=top_k, top_p=top_p, generator=generator,
                        hint=hint)
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or tuple(ids.shape) != (n,):
        raise ExerciseError(f"sample: return a torch.long tensor of shape ({n},) holding token ids, got "
                            f"{type(ids).__name__} {getattr(ids, 'dtype', '')} {tuple(getattr(ids, 'shape', ()))}. "
                            f"{hint}")
    if ids.min() < 0 or ids.max() >= logits.numel():
        raise ExerciseError(f"sample: token ids must lie in 0..{logits.numel() - 1}. {hint}")
    return ids


def check_sampling(sample) -> None:
    """Exercise 4.5: ``sample(logits, n, top_k=None, top_p=None, generator=None) -> (n,) long``.

    Edge cases are exact (which tokens can appear at all); the frequencies are checked with a
    chi-square test at a 1e-4 significance level on 40,000 draws, so a correct sampler fails it
    by chance about once in ten thousand runs (the draws are seeded, so a given answer always gets
    the same verdict).
    """
    from scipy.stats import chi2

    hint = ("Hint: rank the tokens by probability. top-k keeps the k best; top-p then keeps the best tokens "
            "until their probability mass (renormalised over what top-k kept) first reaches p, the token that "
            "crosses p included. Then draw from the kept tokens in proportion to their probabilities "
            "(torch.multinomial with the generator given).")
    generator = torch.Generator().manual_seed(45)
    logits = torch.randn(12, generator=generator) * 2                     # (V,) = (12,)
    cases = [
        ("no filter", None, None),
        ("top_k=3", 3, None),
        ("top_p=0.6", None, 0.6),
        ("top_k=6, top_p=0.8", 6, 0.8),
    ]
    # Exact edge cases first: what may appear at all.
    greedy = int(torch.argmax(logits))
    for label, top_k, top_p in (("top_k=1", 1, None), ("top_p=1e-9", None, 1e-9)):
        ids = _draw(sample, logits, 200, top_k, top_p, 1, hint)
        if not bool((ids == greedy).all()):
            raise ExerciseError(f"sample ({label}): only the most likely token ({greedy}) may be drawn, got "
                                f"{sorted(set(ids.tolist()))}. {hint}")
    print(f"{'sample edge cases':28s} OK     top_k=1 and top_p=1e-9 always give the most likely token")
    masked = logits.clone()
    masked[[greedy, 3]] = float("-inf")                                   # tokens ruled out by the caller
    ids = _draw(sample, masked, 2000, None, None, 2, hint)
    if bool(torch.isin(ids, torch.tensor([greedy, 3])).any()):
        raise ExerciseError(f"sample: a token whose logit is -inf was drawn. Its probability is 0. {hint}")
    ids = _draw(sample, logits, 2000, 50, 1.0, 3, hint)                   # k above the vocabulary: no filter
    if len(set(ids.tolist())) < 8:
        raise ExerciseError(f"sample (top_k=50 > vocabulary, top_p=1.0): nothing should be filtered, but only "
                            f"{len(set(ids.tolist()))} of 12 tokens appeared in 2,000 draws. {hint}")
    # Statistical checks: which tokens appear, and how often.
    n = 40_000
    for seed, (label, top_k, top_p) in enumerate(cases, start=10):
        expected = reference_distribution(logits, top_k, top_p)
        ids = _draw(sample, logits, n, top_k, top_p, seed, hint)
        counts = torch.bincount(ids, minlength=logits.numel()).double()
        outside = sorted(set(ids.tolist()) - set(torch.nonzero(expected > 0).flatten().tolist()))
        if outside:
            raise ExerciseError(f"sample ({label}): drew tokens {outside}, which this filter removes "
                                f"(kept: {torch.nonzero(expected > 0).flatten().tolist()}). {hint}")
        kept = expected > 0
        statistic = float((((counts - n * expected) ** 2)[kept] / (n * expected[kept])).sum())
        dof = int(kept.sum()) - 1
        p_value = float(chi2.sf(statistic, dof)) if dof > 0 else 1.0
        frequencies = counts / n
        worst = float((frequencies - expected).abs().max())
        verdict = "OK" if p_value > 1e-4 else "WRONG"
        print(f"{'sample ' + label:28s} {verdict:6s} {int(kept.sum())} tokens kept, largest frequency error "
              f"{'below 0.01' if worst < 0.01 else f'{worst:.3f}'}")
        if p_value <= 1e-4:
            raise ExerciseError(f"sample ({label}): the right tokens, but the wrong frequencies (chi-square "
                                f"p-value {p_value:.1e}; largest gap {worst:.3f}). Draw each kept token in "
                                f"proportion to its probability. {hint}")
