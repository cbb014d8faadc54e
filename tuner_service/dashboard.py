"""optuna-dashboard on the service's storage: every study, its notes, curves and artifacts.

``tuner-service dashboard`` serves the dashboard with wsgiref, as optuna-dashboard's own
``run_server`` does; that is enough for one person looking at their studies. For a shared
deployment use the same app under gunicorn (``dashboards/wsgi.py``).

The storage is opened with :func:`tuner_service.storage.open_storage` and ``create=False``,
so a mistyped ``--storage`` is one error line instead of a new, empty database that the
dashboard would then happily show.

The dashboard has no authentication and lets anyone who reaches it rename and delete
studies, so it binds to loopback unless told otherwise, and says so when it is not.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner_service.errors import BadInput
from tuner_service.storage import STORAGE_ENV, mask_password, resolve_url

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from optuna.artifacts import FileSystemArtifactStore
    from rich.console import Console

_log = logging.getLogger(__name__)

ARTIFACTS_ENV = "TUNER_SERVICE_ARTIFACTS"
DEFAULT_ARTIFACTS = Path("artifacts")


def artifacts_dir(artifacts: Path | None = None) -> Path | None:
    """The artifact directory: the argument, else ``$TUNER_SERVICE_ARTIFACTS``, else
    ``./artifacts`` when it exists, else None (the dashboard then runs without artifacts).

    An explicitly named directory is created, because workers and the dashboard may start
    in any order; the implicit ``./artifacts`` is not, so running the dashboard from some
    random directory does not litter it.
    """
    if artifacts is None and os.environ.get(ARTIFACTS_ENV):
        artifacts = Path(os.environ[ARTIFACTS_ENV])
    if artifacts is None:
        return DEFAULT_ARTIFACTS if DEFAULT_ARTIFACTS.is_dir() else None
    if artifacts.exists() and not artifacts.is_dir():
        raise BadInput(f"artifact directory {str(artifacts)!r} is a file; pass a directory to --artifacts")
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create artifact directory {str(artifacts)!r}: {exc.strerror}") from None
    return artifacts


def open_artifact_store(artifacts: Path | None = None) -> FileSystemArtifactStore | None:
    """A file-system artifact store on :func:`artifacts_dir`, or None when there is none."""
    from optuna.artifacts import FileSystemArtifactStore

    directory = artifacts_dir(artifacts)
    return None if directory is None else FileSystemArtifactStore(directory)


def make_app(storage_url: str | None, artifacts: Path | None = None) -> WSGIApplication:
    """The optuna-dashboard WSGI app on the service's storage (used by ``serve`` and gunicorn).

    Raises :class:`BadInput` (one line) for a storage that does not exist or cannot be reached.
    """
    import optuna_dashboard

    from tuner_service.storage import open_storage

    # open_storage connects (RDBStorage checks the schema version), so an unreachable
    # server fails here as one line rather than as a 500 on the first page view.
    storage = open_storage(storage_url, create=False)
    return optuna_dashboard.wsgi(storage, artifact_store=open_artifact_store(artifacts))


def storage_url_from_env() -> str:
    """``$TUNER_SERVICE_STORAGE`` for the production entry, which has no default.

    The CLI falls back to ``sqlite:///tuner.db``; a service must not, or a missing variable
    shows an empty dashboard of whatever directory gunicorn was started in.
    """
    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise BadInput(f"set ${STORAGE_ENV} to the storage URL (e.g. postgresql+psycopg://user:pass@host/db)")
    return url


class _LoggingHandler(WSGIRequestHandler):
    """Request lines go to logging (debug), not to stderr: the dashboard polls every few
    seconds and would bury the URL and warnings printed at start."""

    def log_message(self, format: str, *args: Any) -> None:  # "format": the base class names it so
        _log.debug("%s - %s", self.address_string(), format % args)


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


def start_server(
    storage_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: Path | None = None,
) -> WSGIServer:
    """Bind the dashboard's server (not yet serving); ``port=0`` picks a free port.

    Separate from :func:`serve` so tests and embedding code can run ``serve_forever`` in a
    thread and ``shutdown`` it.
    """
    app = make_app(storage_url, artifacts)
    server_class = _IPv6Server if ":" in host else WSGIServer
    try:
        return make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=_LoggingHandler)
    except OSError as exc:
        raise BadInput(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host"
        ) from None


def serve(
    storage_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: Path | None = None,
    console: Console | None = None,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    server = start_server(storage_url, host=host, port=port, artifacts=artifacts)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `docker compose stop`, systemd and kill send SIGTERM: close as cleanly as on Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C as soon as the URL is printed must still close the server cleanly and exit 0.
    try:
        if not is_loopback(host):
            _say(console, f"the dashboard has no authentication and listens on {host}: anyone who can reach "
                          "this port can read, rename and delete studies; bind to 127.0.0.1 and use an SSH "
                          "tunnel, or put it behind an authenticating proxy", warning=True)
        directory = artifacts_dir(artifacts)
        _say(console, f"storage:   {mask_password(resolve_url(storage_url))}")
        _say(console, f"artifacts: {directory if directory is not None else '(none; pass --artifacts DIR)'}")
        _say(console, f"dashboard: {url_for(host, server.server_port)}   (Ctrl-C to stop)")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    """The address to open in a browser (a wildcard bind is reached by this host's name)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/dashboard"


def _say(console: Console | None, text: str, *, warning: bool = False) -> None:
    if console is None:
        _log.log(logging.WARNING if warning else logging.INFO, text)
    elif warning:
        from rich.markup import escape

        console.print(f"[bold yellow]warning:[/] {escape(text)}", soft_wrap=True)
    else:
        # markup=False: paths and URLs may contain [brackets] that rich would eat.
        console.print(text, soft_wrap=True, markup=False)
