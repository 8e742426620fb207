"""lm4f: the small shared library of the course "Large models for founders".

It holds only what two or more notebooks use:

- ``lm4f.data``: the real data sets and the pretrained MiniLM checkpoint, verified by sha256;
- device choice, seeding, the CI-size / full-size switch and a training-loop helper (below);
- ``lm4f.checks``: the one-call checks used by the exercise notebooks.
"""

from lm4f.utils import (
    FULL_SIZE,
    SIZE,
    SMOKE,
    choose_device,
    count_parameters,
    expect_near,
    pick,
    print_environment,
    results_dir,
    results_file,
    seed_everything,
    train_epochs,
    Timer,
)

__version__ = "0.1.0"

__all__ = [
    "FULL_SIZE",
    "SIZE",
    "SMOKE",
    "choose_device",
    "count_parameters",
    "expect_near",
    "pick",
    "print_environment",
    "results_dir",
    "results_file",
    "seed_everything",
    "train_epochs",
    "Timer",
]
