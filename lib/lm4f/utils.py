"""Device choice, seeding, the size switch and a small training loop shared by the chapters."""

from __future__ import annotations

import os
import platform
import random
import time
from typing import Callable, Iterable

import numpy as np

# ---------------------------------------------------------------------------------------------
# The size switch: one environment variable for the whole course.
#
#   LM4F_SIZE=ci    (default) settings that finish in about 5 minutes per notebook on 2 CPU cores;
#                   these are the settings stored notebooks and CI run with.
#   LM4F_SIZE=full  the full-size settings (more data, more epochs, bigger models; a GPU helps).
#
# In a notebook:  epochs = lm4f.pick(ci=2, full=30)
# ---------------------------------------------------------------------------------------------
SIZE = os.environ.get("LM4F_SIZE", "ci").strip().lower()
if SIZE not in ("ci", "full"):
    raise ValueError(f"LM4F_SIZE must be 'ci' or 'full', not {SIZE!r}. Unset it for the CI size.")
FULL_SIZE = SIZE == "full"


def pick(ci, full):
    """Return ``full`` when ``LM4F_SIZE=full``, else ``ci``."""
    return full if FULL_SIZE else ci


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def choose_device(prefer: str | None = None):
    """Pick the best device: ``cuda`` if a GPU is present, then Apple's ``mps``, else ``cpu``.

    ``prefer`` (or the environment variable ``LM4F_DEVICE``) forces one, e.g. ``"cpu"``.
    """
    import torch

    wanted = prefer or os.environ.get("LM4F_DEVICE")
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"Device {wanted!r} was asked for, but no CUDA GPU is visible. "
                               "Unset LM4F_DEVICE or use 'cpu'.")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def print_environment() -> dict:
    """Print (and return) the versions, device and threads that matter for the course."""
    import torch

    facts = {
        "python": platform.python_version(),
        "platform": platform.machine(),
        "numpy": np.__version__,
        "torch": torch.__version__.split("+")[0],
        "device": str(choose_device()),
        "torch threads": torch.get_num_threads(),
        "cpu cores": os.cpu_count(),
        "size": SIZE,
    }
    for key, value in facts.items():
        print(f"{key:14s} {value}")
    return facts


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def train_epochs(
    model,
    train_loader: Iterable,
    loss_fn: Callable,
    optimizer,
    epochs: int,
    device=None,
    scheduler=None,
    evaluate: Callable | None = None,
    progress: bool = True,
) -> list[dict]:
    """A plain PyTorch training loop with a tqdm progress bar.

    For each epoch: forward, loss, backward, optimiser step (and ``scheduler.step()`` per batch if
    given); then ``evaluate(model)`` (returns a dict of metrics) if given. Returns one dict per
    epoch with the mean training loss, the metrics and the seconds taken. Print the result
    rounded: the progress bar itself is for people, not for the stored notebook.
    """
    import torch
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        total_loss, total_items = 0.0, 0
        batches = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress)
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(targets)
            total_items += len(targets)
        row = {"epoch": epoch, "train_loss": total_loss / max(total_items, 1)}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update(evaluate(model))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
    return history
