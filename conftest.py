"""Repository-wide pytest hooks: the per-notebook time budget for nbval runs.

Each stored notebook must re-execute within NOTEBOOK_BUDGET_S seconds (sum of its cells) on the
2-core CI machine. The budget is overridable with LM4F_NOTEBOOK_BUDGET_S (e.g. on a slower laptop).
"""

import os
from collections import defaultdict

NOTEBOOK_BUDGET_S = float(os.environ.get("LM4F_NOTEBOOK_BUDGET_S", "300"))
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
