"""One-call checks for the exercise notebooks.

``check_close(name, mine, reference)`` prints a one-line verdict (exact / close / wrong, with the
largest difference) and raises ``ExerciseError`` with a hint when the answer is wrong, so an
untouched stub fails loudly and a correct answer passes.
"""

from __future__ import annotations

import numpy as np


class ExerciseError(AssertionError):
    """Raised by a check when an exercise answer is wrong (the message holds a hint)."""


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def check_close(name: str, mine, reference, atol: float = 1e-6, rtol: float = 1e-5, hint: str = "") -> float:
    """Check ``mine`` against ``reference``; print the verdict; return the max abs difference."""
    if mine is None:
        raise ExerciseError(f"{name}: your function returned None. {hint}".strip())
    mine_array, reference_array = _as_array(mine), _as_array(reference)
    if mine_array.shape != reference_array.shape:
        raise ExerciseError(f"{name}: shape {mine_array.shape}, expected {reference_array.shape}. {hint}".strip())
    difference = float(np.max(np.abs(mine_array - reference_array))) if mine_array.size else 0.0
    exact = bool(np.array_equal(mine_array, reference_array))
    close = bool(np.allclose(mine_array, reference_array, atol=atol, rtol=rtol))
    verdict = "exact" if exact else ("close" if close else "WRONG")
    print(f"{name:28s} {verdict:6s} max difference {difference:.1e}")
    if not close:
        raise ExerciseError(f"{name}: max difference {difference:.3g} is above tolerance {atol:g}. {hint}".strip())
    return difference


def run_check(name: str, function, *args, hint: str = "", **kwargs):
    """Call a learner's function; turn ``NotImplementedError`` into a clear failing verdict."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError as error:
        raise ExerciseError(f"{name}: not implemented yet ({error}). {hint}".strip()) from error
