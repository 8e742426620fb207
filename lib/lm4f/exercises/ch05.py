"""Checks for exercises/ch05_derivatives.ipynb: the cost of training (FLOPs counted, then hours and
dollars), the GELU derivative, LayerNorm backward, and a GPT's parameter count.

Each check calls the learner's function on fixed inputs, compares with a measured or computed
reference (PyTorch's FLOP counter, autograd in float64, a real module's parameter count), prints a
one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint. The hints point at the
derivation, not at the answer; while the learner's function runs, autograd and the function it
re-implements raise, so an answer that delegates fails.
"""

from __future__ import annotations

import math

import numpy as np

from lm4f.checks import ExerciseError, run_check
from lm4f.exercises.common import agree, AUTOGRAD, forbid, forbid_names


def _rng():
    return np.random.default_rng(5)


# ---------------------------------------------------------------------------------------------
# Exercise 5.1: what a training run costs
# ---------------------------------------------------------------------------------------------
_COST = ("lm4f.cost.training_flops", "lm4f.cost.training_days", "lm4f.cost.training_cost_usd",
         "lm4f.cost.inference_flops", "torch.utils.flop_counter.FlopCounterMode")

# (what, parameters, tokens, peak FLOP/s of one GPU, MFU, USD per GPU-hour): round figures, not quotes
TRAINING_RUNS = [
    ("GPT-2 small on 10B tokens", 124e6, 10e9, 989e12, 0.40, 2.50),
    ("a 7B model on 2T tokens", 7e9, 2e12, 989e12, 0.40, 2.50),
    ("a 1B model on 100B tokens, L4", 1e9, 100e9, 121e12, 0.30, 0.80),
]


def _measured_linear_flops(batch: int, d_in: int, d_out: int) -> tuple[int, int]:
    """FLOPs of y = x @ W forward and backward (gradients for x and W), counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, d_in, requires_grad=True)
    weight = torch.randn(d_in, d_out, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        y = x @ weight
    with FlopCounterMode(display=False) as backward:
        y.backward(torch.ones_like(y))
    return int(forward.get_total_flops()), int(backward.get_total_flops())


def reference_training_cost(n_params, n_tokens, peak_flops, mfu, usd_per_gpu_hour) -> tuple[float, float, float]:
    """(training FLOPs, GPU-hours, USD) with lm4f.cost's 6 N D."""
    from lm4f.cost import training_flops

    flops = training_flops(n_params, n_tokens)
    hours = flops / (peak_flops * mfu) / 3600
    return flops, hours, hours * usd_per_gpu_hour


def check_training_cost(linear_flops, training_cost) -> None:
    """Exercise 5.1: ``linear_flops(batch, d_in, d_out) -> (forward, backward)`` FLOPs of one matmul
    layer, matched exactly to PyTorch's FLOP counter; then ``training_cost(n_params, n_tokens,
    peak_flops, mfu, usd_per_gpu_hour) -> (flops, gpu_hours, usd)`` within 0.1 %."""
    hint = ("Hint: a matmul (B, D) @ (D, H) does one multiply and one add for each of B * D * H products. "
            "Backward needs the gradient for the input AND for the weight: two matmuls, each of which "
            "shapes? Per token, a weight takes part in one product forward: how many FLOPs per parameter per "
            "token does a training step cost? MFU is the fraction of the peak FLOP/s you actually get.")
    forbid_names("5.1", linear_flops, _COST)
    forbid_names("5.1", training_cost, _COST)
    for batch, d_in, d_out in ((1, 1, 1), (8, 16, 4), (32, 768, 3072)):
        measured = _measured_linear_flops(batch, d_in, d_out)
        with forbid("5.1", _COST):
            mine = run_check("linear_flops", linear_flops, batch, d_in, d_out, hint=hint)
        if not isinstance(mine, (tuple, list)) or len(mine) != 2:
            raise ExerciseError(f"linear_flops: return (forward FLOPs, backward FLOPs), got {type(mine).__name__}. "
                                f"{hint}")
        if mine[0] is not None and int(mine[0]) * 2 == measured[0]:
            raise ExerciseError("linear_flops: forward is half of what PyTorch counts. A multiply-add is TWO "
                                "floating-point operations.")
        if mine[1] is not None and int(mine[1]) * 2 == measured[1]:
            raise ExerciseError("linear_flops: backward is half of what PyTorch counts. The weight needs its "
                                "gradient, and so does the input (for the layer below): two matmuls.")
        agree(f"linear_flops{(batch, d_in, d_out)}", np.asarray(mine, dtype=float),
                np.asarray(measured, dtype=float), atol=0, rtol=0, hint=hint)
    for label, *run in TRAINING_RUNS:
        reference = np.array(reference_training_cost(*run))
        with forbid("5.1", _COST):
            mine = run_check("training_cost", training_cost, *run, hint=hint)
        if not isinstance(mine, (tuple, list)) or len(mine) != 3:
            raise ExerciseError(f"training_cost: return (flops, gpu_hours, usd), got {type(mine).__name__}. {hint}")
        mine = np.asarray(mine, dtype=float)
        if np.isclose(mine[0], reference[0] / 3, rtol=1e-3):
            raise ExerciseError("training_cost: your FLOPs count the forward pass only. Training also runs the "
                                "backward pass: use what linear_flops told you.")
        if np.isclose(mine[1], reference[1] * run[3], rtol=1e-3):
            raise ExerciseError("training_cost: your hours assume the GPU runs at its peak. Divide by the "
                                "FLOP/s you actually get: peak times MFU.")
        if np.isclose(mine[1], reference[1] * 3600, rtol=1e-3) or np.isclose(mine[1], reference[1] / 24, rtol=1e-3):
            raise ExerciseError("training_cost: GPU-hours are off by a unit: peak FLOP/s is per SECOND.")
        agree(f"training_cost ({label})", mine / reference, np.ones(3), atol=1e-3, rtol=0, hint=hint)


def check_gelu_derivative(gelu_derivative) -> None:
    """Exercise 5.2: derivative of the exact GELU(x) = x * Phi(x)."""
    import torch

    hint = ("Hint: GELU is a product of two functions of x; differentiate it as one. The derivative of a "
            "CDF is its density. The exact GELU uses erf, not the tanh approximation.")
    x = np.concatenate([np.linspace(-6, 6, 49), _rng().normal(size=20) * 2])  # (69,)
    forbid_names("5.2", gelu_derivative, ("torch.ops.aten.gelu_backward",))
    with forbid("5.2", AUTOGRAD):
        mine = run_check("gelu_derivative", gelu_derivative, x.copy(), hint=hint)
    reference_x = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(reference_x).sum().backward()
    mine_array = np.asarray(mine, dtype=np.float64) if mine is not None else None
    if mine_array is not None and mine_array.shape == x.shape:
        phi_only = 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
        if np.allclose(mine_array, phi_only, atol=1e-6):
            raise ExerciseError("gelu_derivative: you returned Phi(x) only; GELU is x * Phi(x), so the product rule "
                                "adds x * phi(x).")
    agree("gelu_derivative", mine, reference_x.grad.numpy(), atol=1e-9, hint=hint)


_LAYER_NORM = ("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm",
               "torch.nn.LayerNorm")


def check_layernorm_backward(layernorm_backward) -> None:
    """Exercise 5.3: LayerNorm backward: (dx, dgamma, dbeta) from dy."""
    import torch

    hint = ("Hint: gamma and beta are used once per row: sum their contributions over the rows. For dx, the "
            "mean and the variance depend on x too: differentiate xhat_i with respect to x_j (both paths, "
            "through the mean and through the variance), then contract with dy * gamma. The result is "
            "shorter than it looks once you write it with xhat.")
    rng = _rng()
    for rows, features in ((2, 4), (6, 16)):
        x = rng.normal(size=(rows, features)) * 3 + 1  # (N, D)
        gamma = rng.normal(size=features)  # (D,)
        beta = rng.normal(size=features)  # (D,)
        dy = rng.normal(size=(rows, features))  # (N, D)
        with forbid("5.3", AUTOGRAD + _LAYER_NORM):
            mine = run_check("layernorm_backward", layernorm_backward, dy.copy(), x.copy(), gamma.copy(), 1e-5,
                             hint=hint)
        if not isinstance(mine, tuple) or len(mine) != 3:
            raise ExerciseError("layernorm_backward: return a tuple (dx, dgamma, dbeta), "
                                f"got {type(mine).__name__}. {hint}")
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        torch.nn.functional.layer_norm(tx, (features,), tg, tb, eps=1e-5).backward(torch.tensor(dy))
        for name, value, reference in zip(("dx", "dgamma", "dbeta"), mine, (tx.grad, tg.grad, tb.grad)):
            agree(f"layernorm_backward {name}", value, reference.numpy(), atol=1e-8, hint=hint)


# ---------------------------------------------------------------------------------------------
# Exercise 5.4: a GPT's parameter count from its equations
# ---------------------------------------------------------------------------------------------
_PARAM_COUNT = ("lm4f.cost.gpt2_params", "lm4f.cost.architecture_params", "lm4f.cost.llama_params",
                "lm4f.cost.bert_params", "torch.nn.Module.__init__", "lm4f.gpt.GPT.num_params")

# (vocab_size, context, d_model, n_heads, n_layers): tiny, the course's GPT sizes, GPT-2 small and XL
GPT_CONFIGS = [
    (11, 8, 4, 1, 1),
    (11, 8, 4, 2, 1),
    (96, 64, 64, 4, 2),
    (96, 64, 64, 8, 3),
    (50257, 1024, 768, 12, 12),
    (50257, 1024, 1600, 25, 48),
]


def module_parameter_count(vocab_size: int, context: int, d_model: int, n_heads: int, n_layers: int) -> int:
    """Parameters of ``lm4f.gpt.GPT`` built for real (on the meta device: shapes, no memory)."""
    import torch

    from lm4f.gpt import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=context, n_layer=n_layers, n_head=n_heads,
                              n_embd=d_model))
    return sum(p.numel() for p in model.parameters())   # parameters() lists the tied weight once


def check_gpt_parameter_count(gpt_parameter_count) -> None:
    """Exercise 5.4: ``gpt_parameter_count(vocab_size, context, d_model, n_heads, n_layers) -> int``,
    exactly equal to the parameter count of ``lm4f.gpt.GPT`` for six configurations."""
    hint = ("Hint: go through the model's equations and give every matrix and vector its shape: the two "
            "embedding tables, then per block two LayerNorms (a scale and a shift each), the projections "
            "that make queries, keys and values and the one after attention, the two layers of the MLP "
            "(width 4 * d_model), each Linear with a bias; then the final LayerNorm. Splitting d_model into "
            "heads reshapes the projections: does it add parameters? The output layer reuses the token "
            "embedding matrix.")
    forbid_names("5.4", gpt_parameter_count, _PARAM_COUNT[:4])
    for config in GPT_CONFIGS:
        expected = module_parameter_count(*config)
        with forbid("5.4", _PARAM_COUNT):
            mine = run_check("gpt_parameter_count", gpt_parameter_count, *config, hint=hint)
        if mine is None or isinstance(mine, bool) or not float(mine).is_integer():
            raise ExerciseError(f"gpt_parameter_count: return a whole number, got {mine!r}. {hint}")
        mine = int(mine)
        vocab_size, context, d_model, n_heads, n_layers = config
        label = f"gpt_parameter_count(V={vocab_size}, T={context}, d={d_model}, h={n_heads}, L={n_layers})"
        if mine == expected + vocab_size * d_model:
            raise ExerciseError(f"{label}: {mine:,} counts the output layer separately. In this GPT (as in "
                                "GPT-2) it shares its weight with the token embedding: count it once.")
        if mine == expected - context * d_model:
            raise ExerciseError(f"{label}: {mine:,} leaves out the position embeddings (a learned table of "
                                "one vector per position up to the context length).")
        print(f"{label:66s} {'OK' if mine == expected else 'WRONG':6s} {mine:,} (the module: {expected:,})")
        if mine != expected:
            raise ExerciseError(f"{label}: {mine:,}, the module has {expected:,} (off by {mine - expected:+,}). "
                                f"{hint}")
