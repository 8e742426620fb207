"""GPT training on the review corpus: tokens/s, model FLOPs utilisation, and the validation loss
reached in a fixed time budget (60 s by default; LM4F_BENCH_SECONDS overrides).

The model is the CI-size GPT of chapters/ch04_3_gpt.ipynb on a CPU, and its full-size model on a
GPU (bf16 autocast, fused attention, torch.compile). MFU on a CPU uses a stated estimate of peak
FLOP/s (see lm4f.transformer.peak_flops), so read it as a rough figure.
"""

import os
import time

import numpy as np
import torch

import lm4f
from lm4f.text import encode_corpus, get_batch
from lm4f.transformer import GPT, GPTConfig, lr_at, make_optimizer, peak_flops

BUDGET_S = float(os.environ.get("LM4F_BENCH_SECONDS", "60"))


def run():
    torch.manual_seed(0)
    device = lm4f.choose_device()  # LM4F_DEVICE is honoured
    on_gpu = device.type == "cuda"
    if on_gpu:
        shape, batch_size, max_lr = dict(n_layer=8, n_head=8, n_embd=512, block_size=256), 64, 1e-3
    else:
        shape, batch_size, max_lr = dict(n_layer=2, n_head=4, n_embd=64, block_size=64), 32, 3e-3
    config = GPTConfig(vocab_size=96, **shape)
    model = GPT(config).to(device)
    train_model = torch.compile(model) if on_gpu else model
    optimizer = make_optimizer(model, lr=max_lr)
    train_ids, val_ids = encode_corpus("train"), encode_corpus("val")
    generator = torch.Generator().manual_seed(0)
    # The schedule needs a length: a first guess from 5 timed steps, so the cosine ends near the budget.
    expected_steps, warmup = None, 20
    step, tokens, train_seconds = 0, 0, 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < BUDGET_S:
        step_started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup, expected_steps or 10**6)
        x, y = get_batch(train_ids, batch_size, config.block_size, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            _, loss = train_model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        if step >= 5:
            train_seconds += time.perf_counter() - step_started
            tokens += x.numel()
        if step == 10:
            per_step = train_seconds / 5
            expected_steps = int(BUDGET_S / per_step * 0.9)
        step += 1
    model.eval()
    losses = []
    eval_generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(20):
            x, y = get_batch(val_ids, batch_size, config.block_size, eval_generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                losses.append(model(x.to(device), y.to(device))[1].item())
    tokens_per_second = tokens / train_seconds
    peak_name, peak = peak_flops(device)
    context = {"device": torch.cuda.get_device_name(0) if on_gpu else f"CPU, {torch.get_num_threads()} threads",
               "params": model.num_params(), "steps": step}
    return [
        {"metric": "training throughput", "value": tokens_per_second, "unit": "tokens/s", **context},
        {"metric": "model FLOPs utilisation", "value": 100 * model.estimate_mfu(tokens_per_second, device),
         "unit": f"% of {peak_name}", **context},
        {"metric": f"validation loss after {BUDGET_S:.0f} s", "value": float(np.mean(losses)),
         "unit": "nats/char", **context},
    ]
