"""Run every benchmark and report: `make bench` (or `python benchmarks/run.py [name ...]`).

Each file benchmarks/bench_<name>.py defines ``run() -> list[dict]``; each dict is one figure:
``{"benchmark": str, "metric": str, "value": float, "unit": str}`` plus optional context keys.
The figures are printed as a table and written to build/bench/results.json with the machine facts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so benchmark files can share helpers such as timing.best_of
OUTPUT = HERE.parent / "build" / "bench" / "results.json"


def machine() -> dict:
    import torch

    facts = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return facts


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(names: list[str]) -> int:
    files = sorted(HERE.glob("bench_*.py"))
    if names:
        files = [f for f in files if f.stem.removeprefix("bench_") in names]
    rows, failures = [], []
    for path in files:
        print(f"== {path.stem}", flush=True)
        started = time.perf_counter()
        try:
            figures = load(path).run()
        except Exception:
            traceback.print_exc()
            failures.append(path.stem)
            continue
        for figure in figures:
            figure.setdefault("benchmark", path.stem.removeprefix("bench_"))
            rows.append(figure)
        print(f"   done in {time.perf_counter() - started:.1f} s", flush=True)
    width = max((len(f"{r['benchmark']} / {r['metric']}") for r in rows), default=20)
    print()
    print(f"{'benchmark / metric':{width}s}  {'value':>12s}  unit")
    print("-" * (width + 22))
    for row in rows:
        value = row["value"]
        shown = f"{value:12.4g}" if isinstance(value, (int, float)) else f"{value!s:>12s}"
        print(f"{row['benchmark'] + ' / ' + row['metric']:{width}s}  {shown}  {row.get('unit', '')}")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps({"machine": machine(), "figures": rows, "failed": failures}, indent=2))
    print(f"\nwrote {OUTPUT.relative_to(HERE.parent)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
