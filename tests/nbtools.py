"""Run a notebook's code cells in-process, for tests of exercises and notebook-defined code."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CellResult:
    index: int
    tags: list
    source: str
    error: BaseException | None


@contextmanager
def _chdir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def code_cells(path: Path) -> list[tuple[int, list, str]]:
    notebook = json.loads(Path(path).read_text())
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # IPython magics and shell lines are not Python: skip them.
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        cells.append((index, cell.get("metadata", {}).get("tags", []), "\n".join(lines)))
    return cells


def run_cells(path: Path, keep_going_tags=("check",)) -> tuple[dict, list[CellResult]]:
    """Execute every code cell in one namespace, in the notebook's folder.

    A cell tagged with one of ``keep_going_tags`` may raise: its exception is recorded and the run
    goes on (that is how an untouched exercise stub is seen to fail). Any other error propagates.
    """
    path = Path(path).resolve()
    namespace: dict = {"__name__": "__notebook__"}
    results = []
    with _chdir(path.parent):
        for index, tags, source in code_cells(path):
            error = None
            try:
                exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)
            except Exception as caught:  # noqa: BLE001 - recorded for the test to judge
                if not set(tags) & set(keep_going_tags):
                    raise
                error = caught
            results.append(CellResult(index, tags, source, error))
    return namespace, results


def namespace_and_checks(path: Path) -> tuple[dict, list[CellResult]]:
    """Run a notebook (see ``run_cells``): its namespace, and the results of its cells tagged ``check``."""
    namespace, results = run_cells(path)
    return namespace, [result for result in results if "check" in result.tags]


def check_cells(path: Path) -> list[CellResult]:
    """Run a notebook (see ``run_cells``) and return the results of its cells tagged ``check``."""
    return namespace_and_checks(path)[1]


def check_errors(path: Path, count: int) -> list:
    """The errors (or None) of a notebook's ``count`` check cells; fails if the count differs."""
    checks = check_cells(path)
    assert len(checks) == count, f"{Path(path).name}: expected {count} cells tagged 'check', found {len(checks)}"
    return [result.error for result in checks]


def assert_untouched_stubs_fail(errors: list, numbers: tuple) -> None:
    """Each untouched stub's check failed with an ExerciseError that names its exercise number."""
    from lm4f.checks import ExerciseError

    assert len(errors) >= len(numbers)
    for error, number in zip(errors, numbers):
        assert isinstance(error, ExerciseError), f"Exercise {number}: expected ExerciseError, got {error!r}"
        assert "not implemented yet" in str(error) and f"Exercise {number}" in str(error)
