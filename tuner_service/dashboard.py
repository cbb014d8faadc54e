"""optuna-dashboard on the service's storage: every study, its notes, curves and artifacts.

``tuner-service dashboard`` serves the dashboard with wsgiref, as optuna-dashboard's own
``run_server`` does; that is enough for one person looking at their studies. For a shared
deployment use the same app under gunicorn (``dashboards/wsgi.py``).

The storage is opened with :func:`tuner_service.storage.open_storage` and ``create=False``,
so a mistyped ``--storage`` is one error line instead of a new, empty database that the
dashboard would then happily show.

**Access.** optuna-dashboard has no authentication and lets anyone who reaches it rename and
delete studies. :func:`protect` puts a login in front of it: HTTP basic auth (what a browser
prompts for) or ``Authorization: Bearer`` with the same secret (for scripts), both compared
in constant time; with ``read_only`` every request but GET/HEAD is refused with 403, which
covers every write the dashboard's API offers (notes, renaming, deleting studies and
artifacts, telling or skipping trials, preferences, uploads) and any it adds later. Without a
login the dashboard binds to loopback; :func:`check_exposure` refuses any other address
unless the caller says something else guards the port (``--allow-unauthenticated``): a
warning in a log nobody reads does not stop a colleague's script from deleting a study.

**Artifacts** (learning-curve images, retrained models): ``--artifacts DIR``, else
``$TUNER_SERVICE_ARTIFACTS``, else for SQLite the directory beside the database file
(``tuner.db`` -> ``tuner.db-artifacts/``, named like SQLite's own ``-wal``/``-shm`` files, so
the database and its images move and get deleted together), else ``./artifacts`` if it exists.
Workers (:func:`default_artifact_store`) and the dashboard resolve it the same way, so curves
show up without configuring anything.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner_service.errors import BadInput
from tuner_service.storage import STORAGE_ENV, mask_password, resolve_url, sqlite_path

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from optuna.artifacts import FileSystemArtifactStore
    from rich.console import Console

_log = logging.getLogger(__name__)

ARTIFACTS_ENV = "TUNER_SERVICE_ARTIFACTS"
DEFAULT_ARTIFACTS = Path("artifacts")


#: Suffix of the default artifact directory beside a SQLite database file.
SQLITE_ARTIFACTS_SUFFIX = "-artifacts"


def artifacts_dir(artifacts: Path | None = None, storage_url: str | None = None) -> Path | None:
    """The artifact directory: the argument, else ``$TUNER_SERVICE_ARTIFACTS``, else (for a
    SQLite ``storage_url`` whose file exists) ``<database file>-artifacts``, else ``./artifacts``
    when it exists, else None (the dashboard then runs without artifacts).

    A named directory and the one beside the database are created, because workers and the
    dashboard may start in any order; the implicit ``./artifacts`` is not, so running the
    dashboard from some random directory does not litter it.
    """
    if artifacts is None and os.environ.get(ARTIFACTS_ENV):
        artifacts = Path(os.environ[ARTIFACTS_ENV])
    if artifacts is None and storage_url is not None:
        database = sqlite_path(resolve_url(storage_url))
        if database is not None and database.is_file():
            artifacts = database.with_name(database.name + SQLITE_ARTIFACTS_SUFFIX)
    if artifacts is None:
        return DEFAULT_ARTIFACTS if DEFAULT_ARTIFACTS.is_dir() else None
    if artifacts.exists() and not artifacts.is_dir():
        raise BadInput(f"artifact directory {str(artifacts)!r} is a file; pass a directory to --artifacts "
                       f"(or ${ARTIFACTS_ENV})")
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create artifact directory {str(artifacts)!r}: {exc.strerror}; pass a writable "
                       f"directory to --artifacts (or ${ARTIFACTS_ENV})") from None
    return artifacts


def open_artifact_store(artifacts: Path | None = None, storage_url: str | None = None) -> FileSystemArtifactStore | None:
    """A file-system artifact store on :func:`artifacts_dir`, or None when there is none."""
    from optuna.artifacts import FileSystemArtifactStore

    directory = artifacts_dir(artifacts, storage_url)
    return None if directory is None else FileSystemArtifactStore(directory)


def default_artifact_store(storage_url: str | None) -> FileSystemArtifactStore | None:
    """The artifact store a worker writes learning curves to for ``storage_url`` (resolved as
    the CLI does: None means ``$TUNER_SERVICE_STORAGE`` or ``sqlite:///tuner.db``); the one
    ``tuner-service dashboard --storage <same URL>`` shows without being told. Call it once
    per worker process. Raises :class:`BadInput` when the configured directory is unusable."""
    return open_artifact_store(None, resolve_url(storage_url))


def make_app(storage_url: str | None, artifacts: Path | None = None, *, access: Access | None = None) -> WSGIApplication:
    """The optuna-dashboard WSGI app on the service's storage (used by ``serve`` and gunicorn),
    behind :func:`protect` when ``access`` asks for a login or read-only mode.

    Raises :class:`BadInput` (one line) for a storage that does not exist or cannot be reached.
    """
    import optuna_dashboard

    from tuner_service.storage import open_storage

    # open_storage connects (RDBStorage checks the schema version), so an unreachable
    # server fails here as one line rather than as a 500 on the first page view.
    storage = open_storage(storage_url, create=False)
    app = optuna_dashboard.wsgi(storage, artifact_store=open_artifact_store(artifacts, resolve_url(storage_url)))
    return protect(app, access) if access is not None else app


# ---------------------------------------------------------------------------- access

PASSWORD_ENV = "TUNER_SERVICE_DASHBOARD_PASSWORD"
PASSWORD_FILE_ENV = "TUNER_SERVICE_DASHBOARD_PASSWORD_FILE"
USER_ENV = "TUNER_SERVICE_DASHBOARD_USER"
READ_ONLY_ENV = "TUNER_SERVICE_DASHBOARD_READ_ONLY"
ALLOW_UNAUTHENTICATED_ENV = "TUNER_SERVICE_DASHBOARD_ALLOW_UNAUTHENTICATED"
DEFAULT_USER = "tuner"
#: Methods that only read; with ``read_only`` every other one is refused.
READ_METHODS = frozenset({"GET", "HEAD"})
_REALM = 'Basic realm="tuner-service dashboard", charset="UTF-8"'


@dataclass(frozen=True)
class Access:
    """Who may use the dashboard and how: a login (user + password) or none, and read-only."""

    password: str | None = field(default=None, repr=False)
    user: str = DEFAULT_USER
    read_only: bool = False

    @property
    def login_required(self) -> bool:
        return self.password is not None

    @classmethod
    def from_env(
        cls,
        *,
        password_file: Path | None = None,
        user: str | None = None,
        read_only: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Access:
        """Settings from the arguments, else the environment: ``$TUNER_SERVICE_DASHBOARD_PASSWORD``
        or ``..._PASSWORD_FILE`` (a file holding it, e.g. a Docker secret; one trailing newline
        is dropped), ``..._USER`` (default ``tuner``), ``..._READ_ONLY`` (1/0).

        The password never comes from the command line: ``ps`` shows argv to every user.
        """
        env = os.environ if environ is None else environ
        if password_file is None and env.get(PASSWORD_FILE_ENV):
            if env.get(PASSWORD_ENV):
                raise BadInput(f"both ${PASSWORD_ENV} and ${PASSWORD_FILE_ENV} are set; unset one of them")
            password_file = Path(env[PASSWORD_FILE_ENV])
        password = env.get(PASSWORD_ENV) or None
        if password_file is not None:
            password = _read_secret(password_file)
        user = user if user is not None else (env.get(USER_ENV) or DEFAULT_USER)
        if not user or ":" in user:
            raise BadInput(f"dashboard user name {user!r} is not valid; use a non-empty name without ':'")
        if read_only is None:
            read_only = env_flag(READ_ONLY_ENV, env)
        return cls(password=password, user=user, read_only=read_only)


def _read_secret(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"password file {str(path)!r} not found; create it (e.g. openssl rand -hex 24 > FILE) "
                       "or point --password-file at it") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise BadInput(f"cannot read password file {str(path)!r}: {reason}; check its permissions") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise BadInput(f"password file {str(path)!r} is empty; write the password into it")
    return secret


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A yes/no environment variable: 1/true/yes/on or 0/false/no/off (unset or empty: no)."""
    value = (os.environ if environ is None else environ).get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise BadInput(f"${name}={value!r} is not a yes/no value; use 1 or 0")


def protect(app: WSGIApplication, access: Access) -> WSGIApplication:
    """``app`` behind ``access``: 401 without valid credentials, 403 for writes when read-only.

    The 401 answer is the same short text for every path, so it says nothing about the
    studies behind it. Credentials are checked before the method, so an anonymous write
    learns only that a login is needed.
    """
    if not access.login_required and not access.read_only:
        return app
    user = access.user.encode("utf-8")
    secret = (access.password or "").encode("utf-8")

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if access.login_required and not _authorized(environ.get("HTTP_AUTHORIZATION", ""), user, secret):
            return _refuse(start_response, "401 Unauthorized", b"login required\n", [("WWW-Authenticate", _REALM)])
        if access.read_only and environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            return _refuse(start_response, "403 Forbidden", b"this dashboard is read-only\n", [])
        return app(environ, start_response)

    return guarded


def _authorized(header: str, user: bytes, secret: bytes) -> bool:
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return hmac.compare_digest(credentials.strip().encode("utf-8"), secret)
    if scheme != "basic":
        return False
    try:
        given_user, sep, given_secret = base64.b64decode(credentials.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    # Both comparisons always run: which half was wrong must not show in the timing.
    user_ok = hmac.compare_digest(given_user, user)
    secret_ok = hmac.compare_digest(given_secret, secret)
    return bool(sep) and user_ok and secret_ok


def _refuse(start_response: StartResponse, status: str, body: bytes, headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers])
    return [body]


def check_exposure(host: str, access: Access, *, allow_unauthenticated: bool = False) -> str | None:
    """Refuse (:class:`BadInput`) a non-loopback bind without a login unless
    ``allow_unauthenticated``; returns the warning to print when it is allowed, else None."""
    if is_loopback(host) or access.login_required:
        return None
    if not allow_unauthenticated:
        raise BadInput(
            f"refusing to serve the dashboard on {host} without a login (anyone who reaches it could rename and "
            f"delete studies); set ${PASSWORD_ENV} or --password-file FILE, or bind to 127.0.0.1, or pass "
            "--allow-unauthenticated if a proxy or firewall guards the port"
        )
    return (f"the dashboard has no login and listens on {host}: anyone who can reach this port can read, rename "
            "and delete studies; make sure a proxy or firewall guards it")


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
    access: Access | None = None,
) -> WSGIServer:
    """Bind the dashboard's server (not yet serving); ``port=0`` picks a free port.

    Separate from :func:`serve` so tests and embedding code can run ``serve_forever`` in a
    thread and ``shutdown`` it.
    """
    app = make_app(storage_url, artifacts, access=access)
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
    access: Access | None = None,
    allow_unauthenticated: bool = False,
    console: Console | None = None,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C); see :func:`check_exposure`."""
    access = access or Access()
    warning = check_exposure(host, access, allow_unauthenticated=allow_unauthenticated)
    server = start_server(storage_url, host=host, port=port, artifacts=artifacts, access=access)
    previous = _stop_on_signals(server) if threading.current_thread() is threading.main_thread() else {}
    # Ctrl-C as soon as the URL is printed must still close the server cleanly and exit 0.
    try:
        if warning:
            _say(console, warning, warning=True)
        directory = artifacts_dir(artifacts, resolve_url(storage_url))
        _say(console, f"storage:   {mask_password(resolve_url(storage_url))}")
        _say(console, f"artifacts: {directory if directory is not None else '(none; pass --artifacts DIR)'}")
        if access.login_required:
            _say(console, f"login:     user {access.user!r} and the password from ${PASSWORD_ENV}[_FILE] or "
                          "--password-file (or header 'Authorization: Bearer <password>')")
        if access.read_only:
            _say(console, "read-only: every write (notes, renames, deletions, trial updates) is refused")
        _say(console, f"dashboard: {url_for(host, server.server_port)}   (Ctrl-C to stop)")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_signals(server: WSGIServer) -> dict[int, Any]:
    """Ctrl-C (SIGINT) and SIGTERM (`docker compose stop`, systemd, kill) stop the server cleanly.

    Not by raising KeyboardInterrupt: a signal that lands while a request is being answered
    would raise inside wsgiref's handler, whose bare ``except`` logs it and carries on serving.
    The first signal asks ``serve_forever`` to return (``shutdown`` waits for it, so from
    another thread); a second one, if a long request holds it up, interrupts as usual.
    Returns the previous handlers. An ignored SIGINT (a background job) stays ignored.
    """
    previous: dict[int, Any] = {}

    def stop(signum: int, _frame: Any) -> None:
        if getattr(stop, "requested", False):
            raise KeyboardInterrupt
        stop.requested = True  # type: ignore[attr-defined]
        threading.Thread(target=server.shutdown, name="dashboard-shutdown", daemon=True).start()

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signum == signal.SIGINT and signal.getsignal(signum) is not signal.default_int_handler:
            continue
        previous[signum] = signal.signal(signum, stop)
    return previous


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
