"""Storage URL -> the service's Optuna RDB storage (:mod:`tuner_service._rdb`), and how a
caller rides out the storage being briefly unreachable (:func:`with_storage_retry`).

Nothing here changes process-wide state: no logging levels, no warning filters.

PostgreSQL (``postgresql+psycopg://``): pooled connections with ``pool_pre_ping`` (a server
restart costs one failed ping, not a failed trial) and a 10 s connect timeout (an unreachable
host fails a call in seconds, not minutes).
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
        # that the "begin" hook decides how each transaction starts (tuner_service._rdb).
        return {"connect_args": {"timeout": 60, "isolation_level": None}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 300}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def open_storage(url: str | None = None, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (and, for a new database, create) the storage behind ``url``.

    ``create=False`` refuses to create a new SQLite file (read-only commands: a typo must not
    leave an empty database behind).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from tuner_service._rdb import ServiceStorage

    url = resolve_url(url)
    check_url(url)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise BadInput(
            f"no database at {str(path)!r}; check --storage (or ${STORAGE_ENV}) or submit a study first"
        )
    try:
        return ServiceStorage(url, engine_kwargs=_engine_kwargs(url))
    except (SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        raise StorageUnavailable(
            f"cannot open storage {mask_password(url)!r}: {mask_password(_first_line(exc))}; "
            "check the URL, that the server is running and the credentials"
        ) from None


def rdb(storage: Any) -> Any:
    """The RDB storage behind Optuna's cache wrapper (``study._storage`` is a ``_CachedStorage``)."""
    return getattr(storage, "_backend", storage)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- resilience

#: How long a caller waits for the storage to come back before giving up (seconds).
STORAGE_RETRY_SECONDS = float(os.environ.get("TUNER_SERVICE_STORAGE_RETRY_SECONDS", "600"))

#: Words of driver messages that mean "the server/connection is gone or busy", for drivers
#: that report such errors as a generic DatabaseError.
_TRANSIENT_WORDS = ("database is locked", "connection", "server closed", "terminating", "timeout",
                    "could not connect", "the database system is", "broken pipe", "ssl syscall")
#: ... and words that mean the opposite even in an OperationalError (schema, credentials).
_PERMANENT_WORDS = ("no such table", "no such column", "authentication failed", "does not exist", "syntax error",
                    "readonly database", "disk i/o error", "file is not a database")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a storage error that retrying can fix: a lost or
    refused connection, a server shutting down or restarting, a lock timeout. Errors in what
    was written (a value too long for its column, a constraint, bad SQL) are not."""
    from sqlalchemy import exc as sa

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sa.IntegrityError, sa.DataError, sa.ProgrammingError, sa.NotSupportedError)):
            return False
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if any(w in str(exc).lower() for w in _PERMANENT_WORDS):
            return False
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError,
                            ConnectionError)):
            return True
        if isinstance(exc, sa.DatabaseError) and any(w in str(exc).lower() for w in _TRANSIENT_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def with_storage_retry(fn: Any, *args: Any, what: str = "storage", **kwargs: Any) -> Any:
    """Call ``fn``; while the database is unreachable (server restarting, SQLite busy), retry
    with exponential backoff (0.5 s doubling to 10 s) for up to ``STORAGE_RETRY_SECONDS``,
    then raise :class:`StorageOutage`. Any other error passes through at once."""
    import logging
    import time

    from tuner_service.lifecycle._liveness import note_storage_error

    log = logging.getLogger("tuner_service.storage")
    delay, deadline, warned = 0.5, time.monotonic() + STORAGE_RETRY_SECONDS, False
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            note_storage_error()
            if time.monotonic() + delay > deadline:
                raise StorageOutage(f"storage unreachable for {STORAGE_RETRY_SECONDS:.0f} s during {what}: "
                                    f"{mask_password(_first_line(exc))}") from None
            if not warned:
                log.warning("storage unavailable during %s (%s); retrying with backoff",
                            what, mask_password(_first_line(exc)))
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            # Until an attempt succeeds the outage may still be on: a stale check inside the
            # attempt that succeeds must count its liveness margin from now, not from the last
            # failure up to 10 s ago (the live runs' heartbeats may not have resumed yet).
            note_storage_error()
            continue
        if warned:
            log.warning("storage reachable again (%s)", what)
        return result
