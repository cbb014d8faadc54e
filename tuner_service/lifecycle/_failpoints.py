"""Named fault points between the steps of the lifecycle's transactions (for tests).

``TUNER_SERVICE_FAILPOINTS="claim.slot.created=error,finish.committed=kill*2"`` arms them in
a process: ``error`` raises a connection error from the database driver's layer (what a
server restart or a lost connection raises) at that point, rolling the open transaction
back; ``kill`` sends the process SIGKILL there; ``sleep:S`` pauses S seconds. ``*N`` fires on
the first N hits (default 1), ``%N`` on every N-th hit. Unarmed, a point costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "TUNER_SERVICE_FAILPOINTS"


class _Point:
    def __init__(self, action: str) -> None:
        self.every = 0
        self.times = 1
        if "%" in action:
            action, every = action.split("%", 1)
            self.every, self.times = int(every), 0
        elif "*" in action:
            action, times = action.split("*", 1)
            self.times = int(times)
        self.action = action
        self.hits = 0

    def due(self) -> bool:
        self.hits += 1
        if self.every:
            return self.hits % self.every == 0
        return self.hits <= self.times


def _parse(text: str) -> dict[str, _Point]:
    points = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, action = item.partition("=")
        points[name.strip()] = _Point(action.strip() or "error")
    return points


_ARMED = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """Fire the fault armed at ``name``, if any."""
    point = _ARMED.get(name)
    if point is None or not point.due():
        return
    import logging

    logging.getLogger("tuner_service.lifecycle").warning("failpoint %s fired (%s)", name, point.action)
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif point.action.startswith("sleep:"):
        time.sleep(float(point.action.split(":", 1)[1]))
    else:
        from sqlalchemy.exc import OperationalError

        raise OperationalError(f"failpoint {name}", None, ConnectionError(f"injected fault at {name}"))


def arm(spec: str) -> None:
    """Arm points in this process (tests that run the lifecycle in-process)."""
    _ARMED.clear()
    _ARMED.update(_parse(spec))
