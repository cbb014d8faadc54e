"""The service's RDB storage: Optuna's ``RDBStorage`` with the engine settings it relies on.

SQLite: WAL journal, a long busy timeout, and every *writing* transaction opened with ``BEGIN
IMMEDIATE``. Plain Optuna on SQLite lets two processes claim the same waiting trial (both
read WAITING in deferred transactions, both then write); taking the write lock at the start
of a writing transaction serialises claims. Read-only methods (every ``get_*``) open deferred
transactions instead, so the dashboard, ``status`` and polling never queue behind writers
(WAL readers see a consistent snapshot without the lock). ``synchronous=NORMAL`` in WAL mode
keeps every committed transaction across a crash of any process (kill -9); only an OS crash
or power loss can lose the last commits (``TUNER_SERVICE_SQLITE_SYNCHRONOUS=FULL`` closes that
window too).

The settings are engine event hooks, which pickling does not carry: the class re-installs
them when unpickled, so a storage sent to another process (joblib, multiprocessing, a study
pickled by the user) keeps them.

This module imports Optuna; :mod:`tuner_service.storage` imports it only when a storage is
opened.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable
from typing import Any

from optuna.storages import RDBStorage

#: True while a read-only storage method runs in this thread/context.
_READING = contextvars.ContextVar("tuner_service_reading", default=False)

#: RDBStorage methods that only read: their transactions need no write lock.
_READ_METHODS = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials", "get_trial_param",
    "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids", "get_n_trials",
)


def _reading(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _READING.set(True)
        try:
            return method(self, *args, **kwargs)
        finally:
            _READING.reset(token)

    return wrapper


def reading() -> contextvars.Token[bool]:
    """Mark the transactions opened from here on (this context) as read-only; reset the token."""
    return _READING.set(True)


class ServiceStorage(RDBStorage):
    """``RDBStorage`` + the service's engine hooks (SQLite locking, outage detection)."""

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(url, engine_kwargs=engine_kwargs, **kwargs)
        self._install_hooks()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._install_hooks()

    def _install_hooks(self) -> None:
        from tuner_service.lifecycle._liveness import watch_engine

        if self.engine.name == "sqlite":
            install_sqlite_hooks(self.engine)
            self.engine.dispose()  # drop connections made before the hooks were installed
        watch_engine(self.engine)


for _name in _READ_METHODS:
    if hasattr(RDBStorage, _name):
        setattr(ServiceStorage, _name, _reading(getattr(RDBStorage, _name)))


def sqlite_synchronous() -> str:
    from tuner_service.errors import BadInput

    synchronous = os.environ.get("TUNER_SERVICE_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise BadInput(f"TUNER_SERVICE_SQLITE_SYNCHRONOUS={synchronous!r} is not valid; use NORMAL (default) or FULL")
    return synchronous


def install_sqlite_hooks(engine: Any) -> None:
    from sqlalchemy import event

    synchronous = sqlite_synchronous()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if _READING.get() else "BEGIN IMMEDIATE")
