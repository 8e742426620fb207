"""One GPT training step under PyTorch DistributedDataParallel, launched by ``torchrun``.

    torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \\
        -m lm4f.ddp_step --out grads.pt

Every process builds the same tiny GPT (same seed) and the same global batch; process ``rank``
takes its slice of the batch (global batch / world size rows), runs forward and backward, and
DDP averages the gradients across processes during ``backward()`` (all-reduce). Rank 0 saves the
averaged gradients, the loss of each rank and the weights after one optimiser step to ``--out``.

``single_process_step()`` does the same step in one process on the whole batch: the gradients
must match (``tests/test_ddp.py`` checks it). Backend: ``gloo`` on CPU, ``nccl`` on GPUs.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from lm4f.gpt import GPT, GPTConfig
from lm4f.utils import choose_device

CONFIG = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32)
GLOBAL_BATCH = 8
LEARNING_RATE = 1e-2


def build_model_and_batch(seed: int = 0):
    """The same model and global batch (x, y: (GLOBAL_BATCH, T)) in every process."""
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(CONFIG.vocab_size, (GLOBAL_BATCH, CONFIG.block_size), generator=generator)
    y = torch.randint(CONFIG.vocab_size, (GLOBAL_BATCH, CONFIG.block_size), generator=generator)
    return model, x, y


def training_step(model, optimizer, x, y) -> float:
    """The one training step both set-ups share: forward, backward, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()            # under DDP: gradients are all-reduced (averaged) here
    optimizer.step()
    return loss.item()


def single_process_step(seed: int = 0) -> dict:
    """The reference: one process, the whole global batch."""
    model, x, y = build_model_and_batch(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    return {"loss": loss.item(), "grads": grads,
            "weights": {name: p.detach().clone() for name, p in model.named_parameters()}}


def main() -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where rank 0 saves gradients and weights (torch.save)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # NCCL needs one GPU per process; LM4F_DEVICE=cpu, or fewer GPUs than processes, means gloo on the CPU
    use_cuda = choose_device().type == "cuda" and torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if GLOBAL_BATCH % world:
        raise SystemExit(f"GLOBAL_BATCH={GLOBAL_BATCH} must be divisible by the number of processes ({world}).")
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}") if use_cuda else torch.device("cpu")

    model, x, y = build_model_and_batch(args.seed)
    shard = GLOBAL_BATCH // world
    x, y = x[rank * shard:(rank + 1) * shard].to(device), y[rank * shard:(rank + 1) * shard].to(device)
    ddp_model = DDP(model.to(device), device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=LEARNING_RATE)

    optimizer.zero_grad(set_to_none=True)
    _, loss = ddp_model(x, y)                       # this rank's shard: (GLOBAL_BATCH / world, T)
    loss.backward()                                 # all-reduce: every rank now holds the mean gradient
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()}
    optimizer.step()

    losses = [torch.zeros(1, device=device) for _ in range(world)]
    dist.all_gather(losses, loss.detach().reshape(1))
    if rank == 0:
        torch.save({"world_size": world, "backend": dist.get_backend(),
                    "rank_losses": [l.item() for l in losses], "grads": grads,
                    "weights": {name: p.detach().cpu().clone() for name, p in model.named_parameters()}},
                   args.out)
    dist.barrier()                                  # every rank finishes before the group is torn down
    del ddp_model, optimizer, losses                # DDP's reducer and the gather hold gloo work objects
    dist.destroy_process_group()
    # A known gloo problem: its worker threads can still hold tensors while Python shuts down, and
    # freeing them then aborts the process (SIGABRT, "terminate called without an active
    # exception"), rarely, under load, after all the work is done. Everything is saved and the group
    # is destroyed, so leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
