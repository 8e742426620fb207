"""Device choice, seeding, the size switch and a small training loop shared by the chapters."""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# The size switch: one environment variable for the whole course.
#
#   LM4F_SIZE=ci     (default) settings that finish in about 5 minutes per notebook on 2 CPU cores;
#                    these are the settings stored notebooks are executed and checked with.
#   LM4F_SIZE=full   the full-size settings (more data, more epochs, bigger models; a GPU helps).
#   LM4F_SIZE=smoke  the full-size code path (architectures, bf16 autocast, torch.compile) for a
#                    handful of steps on a tiny slice, so that no line of the full run executes for
#                    the first time on a user's machine. Its numbers mean nothing.
#
# In a notebook:  epochs = lm4f.pick(ci=2, full=30, smoke=1)
# A value without ``smoke=`` (an architecture, a precision) takes its full-size value under smoke.
# ---------------------------------------------------------------------------------------------
SIZES = ("ci", "full", "smoke")
SIZE = os.environ.get("LM4F_SIZE", "ci").strip().lower()
if SIZE not in SIZES:
    raise ValueError(f"LM4F_SIZE must be one of {', '.join(SIZES)}, not {SIZE!r}. Unset it for the CI size.")
FULL_SIZE = SIZE in ("full", "smoke")  # smoke runs the full-size code path
SMOKE = SIZE == "smoke"

_UNSET = object()
REPO_ROOT = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    """The folder of the figures chapter 7 reads: ``results/`` in the repository.

    Under ``LM4F_SIZE=smoke`` the figures mean nothing, so they go to ``build/smoke/results/``
    instead and the measured ones stay untouched.
    """
    folder = REPO_ROOT / "build" / "smoke" / "results" if SMOKE else REPO_ROOT / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def results_file(name: str) -> Path:
    """Where a case study writes its figures: ``results_dir() / name``, e.g. ``results/cv.json``."""
    return results_dir() / name


def pick(ci, full, smoke=_UNSET):
    """The setting for the current size: ``ci`` by default, ``full`` under ``LM4F_SIZE=full``.

    Under ``LM4F_SIZE=smoke`` it returns ``smoke`` if given (a step count, a data slice), else
    ``full`` (an architecture, a switch), so that the full-size code path runs, briefly.
    """
    if SMOKE:
        return full if smoke is _UNSET else smoke
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


DEVICES = ("cpu", "cuda", "mps")


def choose_device(prefer: str | None = None):
    """The device every notebook, test and benchmark uses: ``LM4F_DEVICE`` if set, else a CUDA GPU, else the CPU.

    ``prefer`` (or the environment variable ``LM4F_DEVICE``) forces one: ``cpu``, ``cuda``,
    ``cuda:1`` or ``mps``. Apple's ``mps`` is opt-in, never the default: PyTorch's MPS backend
    still lacks some operations (they fall back to the CPU or fail) and is known to give unstable
    losses for some of them, and the stored notebooks' numbers have not been checked against it
    within their tolerances. Set ``LM4F_DEVICE=mps`` to try it.
    """
    import torch

    wanted = (prefer or os.environ.get("LM4F_DEVICE") or "").strip().lower()
    if wanted:
        if wanted.split(":")[0] not in DEVICES:
            raise ValueError(f"LM4F_DEVICE={wanted!r} is not a device this course knows; use one of "
                             f"{', '.join(DEVICES)} (or cuda:N), or unset it.")
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"Device {wanted!r} was asked for, but no CUDA GPU is visible. "
                               "Unset LM4F_DEVICE or set it to 'cpu'.")
        if wanted == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise RuntimeError("Device 'mps' was asked for, but this PyTorch sees no Apple GPU. "
                                   "Unset LM4F_DEVICE or set it to 'cpu'.")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
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


def count_parameters(model) -> int:
    """Numbers a PyTorch model learns: every parameter tensor's size, summed (a tensor shared by two
    layers, such as tied input and output embeddings, counts once)."""
    return int(sum(p.numel() for p in model.parameters()))


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


def expect_near(what: str, value, reference, tol: float) -> None:
    """Check a trained or timed figure against the value stored with the notebook, within ``tol``.

    Figures that come out of training (accuracies, losses, tables of results) change in their last
    digits from one CPU to another, because each CPU sums floats with other kernels. Such a cell
    is not compared as text; it calls ``expect_near`` with a tolerance taken from the spread
    measured across kernel sets, and says so in a comment. ``value`` and ``reference`` may be
    numbers, equal-length sequences or dicts with the same keys.

    The references are CI-size measurements, so the check runs at the CI size only; at the full
    size the numbers are supposed to differ, and under ``smoke`` they mean nothing.
    """
    if SIZE != "ci":
        return
    if isinstance(reference, dict):
        if not isinstance(value, dict) or set(value) != set(reference):
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise AssertionError(f"{what}: expected keys {sorted(reference)}, got {got}")
        pairs = [(f"{what} [{key}]", value[key], reference[key]) for key in reference]
    elif isinstance(reference, (list, tuple, np.ndarray)):
        if len(value) != len(reference):
            raise AssertionError(f"{what}: expected {len(reference)} values, got {len(value)}")
        pairs = [(f"{what} [{i}]", v, r) for i, (v, r) in enumerate(zip(value, reference))]
    else:
        pairs = [(what, value, reference)]
    far = [(name, float(v), float(r)) for name, v, r in pairs if not abs(float(v) - float(r)) <= tol]
    if far:
        lines = "; ".join(f"{name} = {v:.6g}, stored {r:.6g}" for name, v, r in far)
        raise AssertionError(f"{lines}: outside the tolerance +-{tol:g} measured across CPUs. Something changed "
                             "more than float rounding does (data, code, seed or library version).")
