"""A loud summary of skipped test groups at the end of every run (``make test`` included).

pytest's own ``-ra`` lines are easy to miss among hundreds of dots; a browser suite that never
ran reads the same as one that passed. So after the run each skip reason is printed once,
in red, with how many tests it cost and an example; each reason states how to enable the
tests (the skip reasons in this suite are written that way, e.g. ``NO_CHROMIUM``).
"""

from __future__ import annotations

from typing import Any

import pytest

#: Shown under the list.
ENABLE_ALL = "Each reason above says how to enable its tests; `.ci/run` installs chromium and postgresql."


def _reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if getattr(r, "when", "call") in ("setup", "call")]
    if not skipped:
        return
    groups: dict[str, list[str]] = {}
    for report in skipped:
        groups.setdefault(_reason(report), []).append(report.nodeid)
    total = sum(len(ids) for ids in groups.values())
    terminalreporter.section(f"{total} TESTS SKIPPED: these groups did not run", sep="!", red=True, bold=True)
    for reason, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        example = ids[0] + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
        terminalreporter.write_line(f"{len(ids):>4} skipped: {reason}", red=True, bold=True)
        terminalreporter.write_line(f"       e.g. {example}")
    terminalreporter.write_line(ENABLE_ALL, bold=True)
