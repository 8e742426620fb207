"""GPT training on the review corpus: tokens/s, model FLOPs utilisation, and the validation loss
reached in a fixed time budget (60 s by default; LM4F_BENCH_SECONDS overrides).

The model is the final GPT of chapters/ch04_3_gpt.ipynb (CI size) on a CPU, and its full-size model
on a GPU (bf16 autocast, fused attention, torch.compile), trained by the course's one loop,
lm4f.training.train_steps. MFU on a CPU uses a stated estimate of peak FLOP/s (see
lm4f.training.peak_flops), so read it as a rough figure.
"""

import os
import time

import numpy as np
import torch

import lm4f
from lm4f.text import encode_corpus, get_batch
from lm4f.training import make_optimizer, peak_flops, train_steps
from lm4f.gpt import GPT, GPTConfig

BUDGET_S = float(os.environ.get("LM4F_BENCH_SECONDS", "60"))
PROBE_STEPS, UNTIMED_STEPS, WARMUP_STEPS = 10, 5, 20


def run():
    torch.manual_seed(0)
    device = lm4f.choose_device()  # LM4F_DEVICE is honoured
    on_gpu = device.type == "cuda"
    if on_gpu:
        shape, batch_size, max_lr = dict(n_layer=8, n_head=8, n_embd=512, block_size=256), 64, 1e-3
    else:
        shape, batch_size, max_lr = dict(n_layer=2, n_head=4, n_embd=64, block_size=64), 32, 6e-3
    config = GPTConfig(vocab_size=96, **shape)
    model = GPT(config).to(device)
    train_model = torch.compile(model) if on_gpu else model
    optimizer = make_optimizer(model, lr=max_lr)
    train_ids, val_ids = encode_corpus("train"), encode_corpus("val")
    generator = torch.Generator().manual_seed(0)
    settings = dict(batch_size=batch_size, generator=generator, max_lr=max_lr, warmup_steps=WARMUP_STEPS,
                    device=device, autocast_dtype=torch.bfloat16 if on_gpu else None)
    timed = []                                       # seconds of each step after the untimed ones
    started = time.perf_counter()

    def clock(step, loss, seconds):
        if step >= UNTIMED_STEPS:                    # the first steps pick kernels (and compile)
            timed.append(seconds)
        return time.perf_counter() - started > BUDGET_S

    # The cosine schedule needs a length: probe a few steps (inside the warm-up, whose learning rate
    # does not depend on the length), then size the run so that the cosine ends near the budget.
    done = len(train_steps(train_model, optimizer, train_ids, PROBE_STEPS, total_steps=10**6, hook=clock, **settings))
    expected_steps = int(BUDGET_S / np.mean(timed) * 0.9)
    done += len(train_steps(train_model, optimizer, train_ids, 10**9, start_step=done, total_steps=expected_steps,
                            hook=clock, **settings))
    model.eval()
    losses = []
    eval_generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(20):
            x, y = get_batch(val_ids, batch_size, config.block_size, eval_generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                losses.append(model(x.to(device), y.to(device))[1].item())
    tokens_per_second = len(timed) * batch_size * config.block_size / sum(timed)
    peak_name, peak = peak_flops(device)
    context = {"device": torch.cuda.get_device_name(0) if on_gpu else f"CPU, {torch.get_num_threads()} threads",
               "params": model.num_params(), "steps": done}
    return [
        {"metric": "training throughput", "value": tokens_per_second, "unit": "tokens/s", **context},
        {"metric": "model FLOPs utilisation", "value": 100 * model.estimate_mfu(tokens_per_second, device),
         "unit": f"% of {peak_name}", **context},
        {"metric": f"validation loss after {BUDGET_S:.0f} s", "value": float(np.mean(losses)),
         "unit": "nats/char", **context},
    ]
