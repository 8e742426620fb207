"""Training a language model: one loop for chapter 4.3, chapter 9-10, the benchmark and the tests.

    from lm4f.training import make_optimizer, lr_at, train_steps, save_checkpoint, load_checkpoint
    optimizer = make_optimizer(model, lr=6e-3)                 # AdamW, decay on matrices only
    losses = train_steps(model, optimizer, train_ids, steps=1500, batch_size=32, generator=g,
                         max_lr=6e-3, warmup_steps=20, hook=on_step)   # one training loss per step
    save_checkpoint("run/step1500.pt", model, optimizer, step=1500, generator=g)
    model, step = load_checkpoint("run/step1500.pt", model, optimizer, g)   # resumes bit for bit

``train_steps`` is the only training loop for the course's language models: learning rate from
``lr_at`` (linear warm-up, then cosine decay), a random batch of windows, forward (under bf16
autocast when asked: the GPU path), backward, gradient clipping, AdamW step. Its ``hook`` is called
after every step with ``(step, loss, seconds)``: evaluate there, log there, or stop the run by
returning True (a time budget). ``seconds`` is that step's wall time (``loss.item()`` waits for the
device, so it is honest on a GPU too); time spent in the hook is not in it.

The model is any module whose ``forward(idx, targets)`` returns ``(logits, loss)`` and which has a
``config.block_size`` (``lm4f.gpt.GPT`` and the loss-ladder models of chapter 4.3).
``peak_flops(device)`` gives the peak FLOP/s that model FLOPs utilisation divides by (GPUs: ``lm4f.cost.GPUS``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

__all__ = ["make_optimizer", "lr_at", "train_steps", "save_checkpoint", "load_checkpoint", "peak_flops"]


def make_optimizer(model, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases, LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = any(p.is_cuda for p in decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to ``max_lr`` over ``warmup_steps``, then cosine decay to min_ratio * max_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return max_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_steps(model, optimizer, train_ids, steps: int, batch_size: int, generator: torch.Generator,
                start_step: int = 0, total_steps: int | None = None, max_lr: float = 1e-3,
                warmup_steps: int = 0, grad_clip: float | None = 1.0, device=None,
                autocast_dtype: torch.dtype | None = None,
                hook: Callable[[int, float, float], bool | None] | None = None) -> list[float]:
    """Run ``steps`` optimiser steps from ``start_step``; return the training loss of each step run.

    Batches are drawn from ``train_ids`` with ``generator`` (its state is part of a checkpoint,
    so a resumed run draws the same batches). ``total_steps`` is the length of the whole run (the
    cosine schedule ends there; default ``start_step + steps``). ``autocast_dtype=torch.bfloat16``
    trains in mixed precision (the weights and the optimiser stay float32). ``model`` may be a
    ``torch.compile``-d module. ``hook(step, loss, seconds)`` runs after each step; returning True stops the run there.
    """
    from lm4f.text import get_batch

    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    block_size = getattr(model, "_orig_mod", model).config.block_size
    total_steps = total_steps or start_step + steps
    losses = []
    model.train()
    for step in range(start_step, start_step + steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, total_steps)
        x, y = get_batch(train_ids, batch_size, block_size, generator)      # (B, T) each
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())                                          # waits for the device
        if hook is not None:
            stop = hook(step, losses[-1], time.perf_counter() - started)
            model.train()                                                   # the hook may have evaluated
            if stop:
                break
    return losses


def save_checkpoint(path, model, optimizer, step: int, generator: torch.Generator | None = None) -> None:
    """Save everything a resumed run needs: weights, optimiser state, step and RNG states."""
    raw = getattr(model, "_orig_mod", model)                               # unwrap torch.compile
    state = {
        "config": asdict(raw.config),
        "model": raw.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),                                # dropout draws
        "batch_rng": generator.get_state() if generator is not None else None,
    }
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    torch.save(state, path)


def load_checkpoint(path, model=None, optimizer=None, generator: torch.Generator | None = None):
    """Load a checkpoint written by ``save_checkpoint``; returns ``(model, step)``.

    With ``model=None`` a new ``lm4f.gpt.GPT`` is built from the stored config. The
    optimiser and the batch generator, when given, get their stored state back.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if model is None:
        from lm4f.gpt import GPT, GPTConfig

        model = GPT(GPTConfig(**state["config"]))
    getattr(model, "_orig_mod", model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if generator is not None and state["batch_rng"] is not None:
        generator.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    return model, state["step"]


CPU_GHZ = 2.5             # a stated estimate for a server core
CPU_FLOPS_PER_CYCLE = 32  # fp32: 2 FMA units x 8 lanes (AVX2) x 2 FLOPs per FMA


def peak_flops(device=None) -> tuple[str, float]:
    """(name, peak FLOP/s) for ``device``. A GPU is looked up in ``lm4f.cost.GPUS`` (the vendors'
    dense bf16 figures). For a CPU it is an estimate: threads x 2.5 GHz x 32 fp32 FLOPs per cycle
    (AVX2 with two FMA units)."""
    from lm4f.cost import gpu_for_device

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        card = gpu_for_device(name)
        if card is None:
            raise KeyError(f"No peak FLOP/s known for GPU {name!r}: add it to lm4f.cost.GPUS from the vendor's "
                           "data sheet (dense bf16), with a device_pattern that matches that name.")
        return card.name, card.peak_tflops * 1e12
    threads = torch.get_num_threads()
    return (f"CPU estimate ({threads} threads x {CPU_GHZ} GHz x {CPU_FLOPS_PER_CYCLE} FLOP/cycle)",
            threads * CPU_GHZ * 1e9 * CPU_FLOPS_PER_CYCLE)
