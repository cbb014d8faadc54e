"""Storage URL -> Optuna RDB storage with engine settings that hold up under many workers.

SQLite: WAL journal, a long busy timeout, and every transaction opened with
``BEGIN IMMEDIATE``. Plain Optuna on SQLite lets two processes claim the same waiting
trial (both read WAITING in deferred transactions, both then write); taking the write lock at
the start of the transaction serialises claims, so an enqueued point (grid point, retry,
budget slot) runs exactly once. ``synchronous=NORMAL`` in WAL mode keeps every committed
transaction across a crash of any process (kill -9); only an OS crash or power loss can lose
the last commits. Set ``TUNER_SERVICE_SQLITE_SYNCHRONOUS=FULL`` to close that window too.

PostgreSQL (``postgresql+psycopg://``): pooled connections with ``pool_pre_ping`` so a
server restart costs one failed ping, not a failed trial.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner_service.errors import BadInput, StorageOutage, StorageUnavailable

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///tuner.db"
STORAGE_ENV = "TUNER_SERVICE_STORAGE"

#: Heartbeat settings (seconds). A trial whose heartbeat is older than the grace period is
#: failed and re-queued with the same parameters.
HEARTBEAT_INTERVAL = int(os.environ.get("TUNER_SERVICE_HEARTBEAT_INTERVAL", "5"))
HEARTBEAT_GRACE = int(os.environ.get("TUNER_SERVICE_HEARTBEAT_GRACE", "20"))

_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z0-9+._-]+://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<tail>@)")


def mask_password(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _PASSWORD_RE.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the argument, else ``$TUNER_SERVICE_STORAGE``, else SQLite."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other backends/in-memory."""
    if not url.startswith("sqlite:"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def check_url(url: str) -> None:
    """Reject URLs that cannot work before anything touches them."""
    scheme = url.split(":", 1)[0]
    if "://" not in url:
        shown = re.sub(r"^([^:/@\s]*):[^@\s]+@", r"\1:***@", url)  # user:pw@host without a scheme
        raise BadInput(
            f"storage URL {shown!r} is not a URL; use e.g. sqlite:///tuner.db "
            "or postgresql+psycopg://user:pass@host/db"
        )
    known = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql")
    if scheme not in known:
        raise BadInput(
            f"storage URL scheme {scheme!r} is not supported; use one of: {', '.join(known)}"
        )
    path = sqlite_path(url)
    if path is not None and not path.parent.exists():
        raise BadInput(
            f"storage URL {url!r}: directory {str(path.parent)!r} does not exist; create it "
            "or point --storage at an existing directory"
        )


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # isolation_level=None: the sqlite3 module must not open transactions itself, so
        # that the "begin" hook below decides how each transaction starts.
        return {"connect_args": {"timeout": 60, "isolation_level": None}}
    return {"pool_pre_ping": True, "pool_recycle": 300}


def _install_sqlite_hooks(engine: Any) -> None:
    from sqlalchemy import event

    synchronous = os.environ.get("TUNER_SERVICE_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise BadInput(
            f"TUNER_SERVICE_SQLITE_SYNCHRONOUS={synchronous!r} is not valid; "
            "use NORMAL (default) or FULL"
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(
    url: str | None = None,
    *,
    heartbeat: bool = False,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """Open (and, for a new database, create) the Optuna storage behind ``url``.

    ``heartbeat=True`` enables Optuna's heartbeat so stale trials can be failed and retried;
    workers use it, read-only commands do not need it. ``create=False`` refuses to create a
    new SQLite file (used by read-only commands so a typo does not leave an empty database).
    """
    import warnings

    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    # Heartbeats and fail_stale_trials are marked experimental; we rely on them on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we report progress ourselves
    url = resolve_url(url)
    check_url(url)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise BadInput(
            f"no database at {str(path)!r}; check --storage (or ${STORAGE_ENV}) or submit a study first"
        )
    kwargs: dict[str, Any] = {}
    if heartbeat:
        from tuner_service.retry import RequeueStaleTrial

        kwargs = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": HEARTBEAT_GRACE,
            "heartbeat_stale_trial_callback": RequeueStaleTrial(),
        }
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except (SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        raise StorageUnavailable(
            f"cannot open storage {mask_password(url)!r}: {mask_password(_first_line(exc))}; "
            "check the URL, that the server is running and the credentials"
        ) from None
    if url.startswith("sqlite"):
        _install_sqlite_hooks(storage.engine)
        storage.engine.dispose()  # drop connections made before the hooks were installed
    return storage


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- resilience

#: How long a worker waits for the storage to come back before giving up (seconds).
STORAGE_RETRY_SECONDS = float(os.environ.get("TUNER_SERVICE_STORAGE_RETRY_SECONDS", "600"))


def with_storage_retry(fn: Any, *args: Any, what: str = "storage", **kwargs: Any) -> Any:
    """Call ``fn``; while the database is unreachable (server restarting, SQLite busy),
    retry with exponential backoff (0.5 s doubling to 10 s) for up to
    ``STORAGE_RETRY_SECONDS``. Logic errors (a finished trial, a missing study) pass through."""
    import logging
    import time

    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError

    log = logging.getLogger("tuner_service.storage")
    delay, deadline, warned = 0.5, time.monotonic() + STORAGE_RETRY_SECONDS, False
    while True:
        try:
            result = fn(*args, **kwargs)
        except (StorageInternalError, DBAPIError) as exc:
            if time.monotonic() + delay > deadline:
                raise StorageOutage(f"storage unreachable for {STORAGE_RETRY_SECONDS:.0f} s during {what}: "
                                         f"{mask_password(_first_line(exc))}") from None
            if not warned:
                log.warning("storage unavailable during %s (%s); retrying with backoff",
                            what, mask_password(_first_line(exc)))
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if warned:
            log.warning("storage reachable again (%s)", what)
        return result


def set_trial_user_attrs(storage: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """Write several trial user attrs in one transaction (one commit instead of one each).

    Uses the same per-attribute routine Optuna's ``RDBStorage.set_trial_user_attr`` uses, inside
    one session; other storages fall back to one call per attribute.
    """
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session
    except ImportError:  # pragma: no cover - a future Optuna layout
        RDBStorage = None  # noqa: N806
    storage = _rdb(storage)
    if RDBStorage is not None and isinstance(storage, RDBStorage) and hasattr(storage, "_set_trial_attr_without_commit"):
        with _create_scoped_session(storage.scoped_session, True) as session:
            for key, value in attrs.items():
                storage._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
        return
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def waiting_trial_ids(storage: Any, study_id: int, limit: int = 8) -> list[int]:
    """Ids of up to ``limit`` WAITING trials of a study, oldest first.

    One indexed query, so claiming stays cheap when a study has thousands of budget slots
    (``get_all_trials(states=(WAITING,))`` would load every waiting trial on every claim).
    """
    from optuna.trial import TrialState

    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session
    except ImportError:  # pragma: no cover - a future Optuna layout
        RDBStorage = None  # noqa: N806
    storage = _rdb(storage)
    if RDBStorage is not None and isinstance(storage, RDBStorage):
        with _create_scoped_session(storage.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.WAITING)
                .order_by(models.TrialModel.trial_id)
                .limit(limit)
                .all()
            )
        return [r[0] for r in rows]
    return [t._trial_id for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))][:limit]


# --------------------------------------------------------------------------- the budget counter


def _rdb(storage: Any) -> Any:
    """The RDBStorage behind Optuna's cache wrapper (``study._storage`` is a ``_CachedStorage``)."""
    return getattr(storage, "_backend", storage)


def _budget_table() -> Any:
    from sqlalchemy import Column, Integer, MetaData, Table

    return Table(
        "tuner_service_budget", MetaData(),
        Column("study_id", Integer, primary_key=True, autoincrement=False),
        Column("remaining", Integer, nullable=False),
    )


_BUDGET = None
_BUDGET_READY: set[int] = set()  # engines whose table exists (create_all costs a query per call)


def budget_table(storage: Any) -> Any:
    """The one table of our own: per study, how many trials may still be started.

    Taking a slot is one atomic ``UPDATE ... SET remaining = remaining - 1 WHERE remaining > 0``
    (SQLite: inside ``BEGIN IMMEDIATE``; PostgreSQL: a row lock), so N workers never start
    more than the budget, without thousands of placeholder trials that every sampler call
    would have to re-read.
    """
    global _BUDGET
    if _BUDGET is None:
        _BUDGET = _budget_table()
    engine = _rdb(storage).engine
    if id(engine) not in _BUDGET_READY:
        from sqlalchemy import inspect
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

        try:
            _BUDGET.metadata.create_all(engine, checkfirst=True)
        except (IntegrityError, ProgrammingError, OperationalError):
            # Several processes on a fresh database raced to create it; one won.
            if not inspect(engine).has_table(_BUDGET.name):
                raise
        _BUDGET_READY.add(id(engine))
    return _BUDGET


def add_budget(storage: Any, study_id: int, n: int) -> None:
    from sqlalchemy import case, insert, select, update

    table = budget_table(storage)
    with _rdb(storage).engine.begin() as conn:
        row = conn.execute(select(table.c.remaining).where(table.c.study_id == study_id)).first()
        if row is None:
            conn.execute(insert(table).values(study_id=study_id, remaining=max(n, 0)))
        else:
            new = table.c.remaining + n
            conn.execute(update(table).where(table.c.study_id == study_id)
                         .values(remaining=case((new < 0, 0), else_=new)))


def take_budget(storage: Any, study_id: int) -> bool:
    """Atomically take one trial slot; False when none is left."""
    from sqlalchemy import update

    table = budget_table(storage)
    with _rdb(storage).engine.begin() as conn:
        result = conn.execute(update(table).where(table.c.study_id == study_id, table.c.remaining > 0)
                              .values(remaining=table.c.remaining - 1))
        return result.rowcount == 1


def remaining_budget(storage: Any, study_id: int) -> int:
    from sqlalchemy import select

    table = budget_table(storage)
    with _rdb(storage).engine.connect() as conn:
        row = conn.execute(select(table.c.remaining).where(table.c.study_id == study_id)).first()
    return int(row[0]) if row else 0


def drop_budget(storage: Any, study_id: int) -> None:
    from sqlalchemy import delete

    table = budget_table(storage)
    with _rdb(storage).engine.begin() as conn:
        conn.execute(delete(table).where(table.c.study_id == study_id))


def compare_and_set_study_user_attr(storage: Any, study_id: int, key: str, expected: Any, new: Any) -> bool:
    """Set a study user attr to ``new`` only if it still holds ``expected``; atomic.

    One ``UPDATE ... WHERE value_json = <expected>`` on Optuna's own table (the JSON Optuna
    itself writes), so of several agents exactly one wins a job.
    """
    import json

    from optuna.storages._rdb import models
    from sqlalchemy import update

    table = models.StudyUserAttributeModel.__table__
    with _rdb(storage).engine.begin() as conn:
        result = conn.execute(
            update(table)
            .where(table.c.study_id == study_id, table.c.key == key, table.c.value_json == json.dumps(expected))
            .values(value_json=json.dumps(new))
        )
        return result.rowcount == 1
