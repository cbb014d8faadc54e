"""A throwaway PostgreSQL server for the tests: one per test session, one database per test.

Why a real server and not a mock: the budget is only exact because claiming a trial is one
``SELECT ... FOR UPDATE`` transaction, and a storage outage is only survivable because the
engine uses ``pool_pre_ping``; both are properties of PostgreSQL itself.

The server is initialised in a temporary directory, listens on 127.0.0.1 on a free port
(plus a Unix socket inside the temporary directory), and trusts local socket connections
for the superuser, which the fixtures use for set-up. TCP connections need a password, so
the ``tuner`` role gets a random one and every test URL carries it: tests that check that
passwords never reach logs and error messages test a real secret, and a wrong password
really fails.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
user (created by Debian's package) or, failing that, a ``tuner-pg`` system user created
here; otherwise it runs as the current user.

Fixtures: ``postgres_server`` (session; a :class:`PostgresServer`) and ``pg_url``
(function; a URL of a fresh, empty database owned by ``tuner``). Tests that stop the server
(outage tests) leave it to ``pg_url`` to start it again for the next test.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin", "pg_url", "postgres_server"]

INSTALL_HINT = (
    "the PostgreSQL server binaries (initdb, pg_ctl) are needed for the postgres tests; "
    ".ci/run installs the postgresql package (Debian: apt-get install -y postgresql), "
    "or point $TUNER_TEST_PG_BIN at a directory holding initdb and pg_ctl"
)
ROLE = "tuner"
DATABASE = "tuner"
SUPERUSER = "postgres"
FALLBACK_OS_USER = "tuner-pg"


class PostgresUnavailable(RuntimeError):
    """The server cannot be found, initialised or started; the message says why."""


def find_pg_bin() -> Path:
    """The directory with ``initdb`` and ``pg_ctl``: $TUNER_TEST_PG_BIN, Debian's newest, or $PATH.

    Debian keeps the server binaries out of $PATH (/usr/lib/postgresql/<major>/bin), so
    they are looked for there first, newest major version first.
    """
    candidates: list[Path] = []
    if os.environ.get("TUNER_TEST_PG_BIN"):
        candidates.append(Path(os.environ["TUNER_TEST_PG_BIN"]))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    debian.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    candidates += [Path(p) for p in debian]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise PostgresUnavailable(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_os_user() -> str | None:
    """The unprivileged user to run the server as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in (SUPERUSER, FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True, capture_output=True, text=True,
    )
    return FALLBACK_OS_USER


def _base_tmp(os_user: str | None) -> str:
    """Where the server's directory goes: $TMPDIR if short and reachable by the server user.

    A Unix socket path must fit in ~107 bytes, and as root the server user must be able to
    walk down to the directory (a $TMPDIR under /root would not do), so fall back to /tmp.
    """
    base = tempfile.gettempdir()
    if len(base) > 60:
        return "/tmp"
    if os_user is not None:
        p = Path(base).resolve()
        for part in [p, *p.parents]:
            if not part.stat().st_mode & 0o001:
                return "/tmp"
    return base


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, with start/stop for outage tests.

    Attributes: ``url`` (SQLAlchemy URL of the ``tuner`` database, with the password),
    ``password``, ``host``, ``port``, ``user``, ``database``, ``socket_dir``, ``data_dir``,
    ``log_file``, ``running``.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.bin_dir = find_pg_bin()
        self.os_user = _server_os_user()
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir=_base_tmp(self.os_user)))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.user = ROLE
        self.database = DATABASE
        self.password = secrets.token_hex(16)
        self.running = False
        self._initialised = False

    # ------------------------------------------------------------------ URLs

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, *, password: str | None = None) -> str:
        """``postgresql+psycopg://tuner:<password>@127.0.0.1:<port>/<database>``."""
        pw = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{pw}@{self.host}:{self.port}/{database}"

    # ------------------------------------------------------------------ lifecycle

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- server log ---\n" + "\n".join(self.log_file.read_text().splitlines()[-20:])
        return ""

    def init(self) -> None:
        """initdb with settings for speed (no fsync: the data is thrown away) and password auth on TCP."""
        for d in (self.data_dir, self.socket_dir):
            d.mkdir()
        if self.os_user is not None:
            for p in (self.root, self.data_dir, self.socket_dir):
                shutil.chown(p, self.os_user)
        self._run(
            "initdb", "-D", str(self.data_dir), "--username", SUPERUSER, "--encoding", "UTF8",
            "--no-locale", "--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync",
        )
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "300",
            # No fsync: the data is thrown away, and an immediate stop (a killed process, not an
            # OS crash) keeps what is in the page cache. synchronous_commit stays on: with it off
            # an immediate stop loses the last commits, which outage tests must not see.
            "fsync": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as f:  # keeps the file's owner
            f.write("\n# tests/pg_server.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._initialised = True

    def start(self) -> None:
        """Start the server (same data, port and password) and wait until it accepts connections."""
        if self.running:
            return
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")
        self.running = True

    def stop(self) -> None:
        """Stop at once (``-m immediate``, like a crash): clients see their connections drop."""
        if not self.running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "60")
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def setup(self) -> None:
        """initdb, start (retrying on another port if the chosen one was taken), create role and database."""
        self.init()
        for attempt in range(3):
            try:
                self.start()
                break
            except PostgresUnavailable:
                if attempt == 2 or "could not bind" not in self._log_tail():
                    raise
                self._set_port(_free_port())
        self.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        self.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def _set_port(self, port: int) -> None:
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text().replace(f"port = {self.port}\n", f"port = {port}\n"))
        self.port = port

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ admin SQL

    def execute(self, sql: str, *, dbname: str = "postgres") -> None:
        """Run one statement as the superuser over the Unix socket (trusted: no password)."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname, autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by ``tuner``; returns its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        # FILE_COPY: with fsync off, copying the tiny template is faster than WAL-logging it.
        self.execute(f"CREATE DATABASE {name} OWNER {ROLE} STRATEGY FILE_COPY")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing connections that tests' engines left open."""
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def __repr__(self) -> str:  # never show the password
        return f"PostgresServer(port={self.port}, running={self.running}, data_dir={str(self.data_dir)!r})"


def _check_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed; `make install` installs it (the dev extra)") from None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; fails (never skips) when PostgreSQL is not installed.

    Failing, not skipping: a missing server would otherwise silently drop the backend the
    service is deployed on from CI.
    """
    try:
        _check_psycopg()
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    atexit.register(server.cleanup)  # also when pytest is interrupted before teardown
    try:
        server.setup()
    except (PostgresUnavailable, subprocess.SubprocessError, OSError) as exc:
        server.cleanup()
        pytest.fail(f"could not start the test PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()
        atexit.unregister(server.cleanup)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh database on the session server (started again if a test stopped it)."""
    postgres_server.start()
    name = f"t_{secrets.token_hex(6)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.start()  # an outage test may have left it stopped
    _drop_quietly(postgres_server, name)


def _drop_quietly(server: PostgresServer, name: str) -> None:
    for _ in range(3):
        try:
            server.drop_database(name)
            return
        except Exception:  # a just-restarted server may still be finishing recovery
            time.sleep(0.5)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; True when it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
