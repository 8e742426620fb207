"""Repository-wide pytest hooks: the per-notebook time budget for nbval runs.

Each stored notebook should re-execute in about 5 minutes (sum of its cells) on a 2-core machine, two
notebooks side by side; the enforced limit, NOTEBOOK_BUDGET_S, is 360 s so that a machine 20% slower
than the one that stored the outputs still passes. Overridable with LM4F_NOTEBOOK_BUDGET_S.
"""

import os
from collections import defaultdict

NOTEBOOK_BUDGET_S = float(os.environ.get("LM4F_NOTEBOOK_BUDGET_S", "360"))
_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section(f"notebook times (budget {NOTEBOOK_BUDGET_S:.0f} s each)")
    for path, seconds in sorted(_notebook_seconds.items(), key=lambda item: -item[1]):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = {path: seconds for path, seconds in _notebook_seconds.items() if seconds > NOTEBOOK_BUDGET_S}
    if over and exitstatus == 0:
        session.exitstatus = 1
