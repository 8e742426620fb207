"""Timing helper shared by the benchmark files (benchmarks/ is on sys.path under run.py)."""

import time


def best_of(function, repeats: int = 3) -> float:
    """Seconds taken by the fastest of ``repeats`` calls of ``function()``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best
