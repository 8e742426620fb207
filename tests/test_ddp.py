"""DDP: two CPU processes (torchrun, gloo, loopback) give the gradients of one process on the whole batch."""

import subprocess
import sys
from pathlib import Path

import torch

from lm4f.ddp_step import single_process_step
from lm4f.serving import free_port
from tests.nbtools import REPO


def test_two_processes_average_to_the_whole_batch_gradient(tmp_path):
    out = tmp_path / "ddp.pt"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               "-m", "lm4f.ddp_step", "--out", str(out)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ddp = torch.load(out, weights_only=False)
    reference = single_process_step()

    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    # each rank saw a different half of the batch ...
    assert ddp["rank_losses"][0] != ddp["rank_losses"][1]
    # ... and the mean of the two half-batch losses is the whole-batch loss
    assert abs(sum(ddp["rank_losses"]) / 2 - reference["loss"]) < 1e-5
    assert ddp["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():
        assert torch.allclose(ddp["grads"][name], grad, atol=1e-6, rtol=1e-5), name
    for name, weight in reference["weights"].items():
        assert torch.allclose(ddp["weights"][name], weight, atol=1e-7), name


def test_half_batch_gradient_alone_is_not_the_whole_batch_gradient():
    """The check above can fail: one shard's gradient differs from the averaged one."""
    from lm4f.ddp_step import build_model_and_batch

    model, x, y = build_model_and_batch()
    _, loss = model(x[:4], y[:4])
    loss.backward()
    reference = single_process_step()["grads"]
    difference = max((p.grad - reference[n]).abs().max().item() for n, p in model.named_parameters())
    assert difference > 1e-4
