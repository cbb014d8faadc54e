"""Heartbeats, and this process's view of the storage's health (see the package docstring).

A driver may judge another run's heartbeat stale only after its own storage access has been
healthy for a while: a storage outage stops every heartbeat at once, and right after it ends
the live runs' heartbeat threads need a moment to write again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

_log = logging.getLogger("tuner_service.lifecycle")

_lock = threading.Lock()
_last_error = time.monotonic()  # a process starts as if it had just seen an outage


def note_storage_error() -> None:
    """Record that a database call of this process failed on a connection-level error."""
    global _last_error
    with _lock:
        _last_error = time.monotonic()


def healthy_for() -> float:
    """Seconds since this process started or last saw a storage error, whichever is later."""
    return time.monotonic() - _last_error


def watch_engine(engine: Any) -> None:
    """Count every connection-level error on ``engine`` (any thread, any caller) as an outage."""
    from sqlalchemy import event

    if getattr(engine, "_tuner_service_watched", False):
        return

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        from tuner_service.storage import is_transient

        if context.is_disconnect or is_transient(context.original_exception):
            note_storage_error()

    engine._tuner_service_watched = True


class Heartbeat:
    """Refreshes a RUNNING trial's heartbeat row from a daemon thread.

    The claim wrote the first beat in its own transaction; this thread beats every
    ``interval`` seconds after it, and after a failed beat every second until one succeeds,
    so a run is seen alive again within a second of the storage coming back.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        from tuner_service.storage import rdb

        self._backend = rdb(storage)
        self.trial_id, self.interval = trial_id, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{trial_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        failing = False
        while not self._done.wait(1.0 if failing else self.interval):
            try:
                self._backend.record_heartbeat(self.trial_id)
            except Exception as exc:  # the storage may be down; retry sooner than usual
                note_storage_error()
                if not failing:
                    _log.warning("heartbeat of trial id %s failed (%s); retrying every second",
                                 self.trial_id, type(exc).__name__)
                failing = True
                continue
            if failing:
                _log.info("heartbeat of trial id %s recorded again", self.trial_id)
            failing = False
