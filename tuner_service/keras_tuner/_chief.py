"""keras-tuner's chief/worker setup on one shared study.

keras-tuner's distributed mode runs the same script in every process with
``KERASTUNER_TUNER_ID`` ("chief" for one of them), ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT``: the chief serves its oracle there and the workers ask it for
trials. Here the study in the storage is the oracle, so the chief's address serves one thing:
telling a worker which study to join. The chief creates (or resumes, or with
``overwrite=True`` replaces) the study, then answers each connection with one JSON line
``{"project", "storage", "study_id"}`` until its ``search()`` ends; the storage URL is sent
with its password masked, so a worker of a password-protected database needs the same URL
itself (``storage=`` or ``TUNER_SERVICE_STORAGE``). A worker never creates, deletes or
overwrites the study: it waits for the chief (up to ``TUNER_SERVICE_CHIEF_WAIT`` seconds,
default 600), joins, and claims trials from the same budget as the chief.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from typing import Any

from keras_tuner.src.distribute import utils as _dist

from tuner_service.storage import mask_password

CHIEF_WAIT_ENV = "TUNER_SERVICE_CHIEF_WAIT"
_current: ChiefServer | None = None


def role() -> str | None:
    """"chief", "worker", or None outside a chief/worker group (keras-tuner's own checks,
    which raise for an incomplete set of variables)."""
    if not _dist.has_chief_oracle():
        return None
    return "chief" if _dist.is_chief_oracle() else "worker"


def address() -> tuple[str, int]:
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    try:
        return os.environ["KERASTUNER_ORACLE_IP"], int(port)
    except ValueError:
        raise ValueError(f"KERASTUNER_ORACLE_PORT={port!r} is not a port number; set it to e.g. 8000") from None


class ChiefServer:
    """Answers every connection on the chief's address with ``info`` (one JSON line)."""

    def __init__(self, info: dict[str, Any]) -> None:
        global _current
        if _current is not None:  # a script with several tuners: one address, the latest project
            _current.close()
        payload = (json.dumps(info) + "\n").encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(payload)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        host, port = address()
        try:
            self._server = Server((host, port), Handler)
        except OSError as exc:
            raise RuntimeError(f"the chief cannot listen on {host}:{port} (KERASTUNER_ORACLE_IP/PORT): {exc}; "
                               "choose a free port") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="kt-chief", daemon=True)
        self._thread.start()
        _current = self

    def close(self) -> None:
        global _current
        self._server.shutdown()
        self._server.server_close()
        if _current is self:
            _current = None


def chief_info(project: str, storage_url: str, study_id: int) -> dict[str, Any]:
    return {"project": project, "storage": mask_password(storage_url), "study_id": study_id}


def ask_chief(project: str, done: Any = None) -> dict[str, Any]:
    """Wait until the chief serves ``project``; its answer. ``done(answer)`` may accept an
    answer for another project (the chief already finished ours)."""
    host, port = address()
    wait = float(os.environ.get(CHIEF_WAIT_ENV, "600"))
    deadline = time.monotonic() + wait
    while True:
        answer = _ask(host, port)
        if answer is not None and (answer.get("project") == project or (done is not None and done(answer))):
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"no chief serves project {project!r} at {host}:{port} (KERASTUNER_ORACLE_IP/PORT) "
                               f"after {wait:.0f} s; start the same script with KERASTUNER_TUNER_ID=chief, or raise "
                               f"{CHIEF_WAIT_ENV}")
        time.sleep(0.5)


def _ask(host: str, port: int) -> dict[str, Any] | None:
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            line = conn.makefile("rb").readline()
        return json.loads(line) if line else None
    except (OSError, ValueError):
        return None


def worker_storage(answer: dict[str, Any], own_url: str) -> str:
    """The storage a worker opens: its own URL when it names the chief's storage, else the
    chief's (which has no password to hide)."""
    chief_url = str(answer["storage"])
    if mask_password(own_url) == chief_url:
        return own_url
    if "***" in chief_url:
        raise RuntimeError(f"the chief's storage is {chief_url}; give this worker the same URL with its password "
                           "(storage=... or TUNER_SERVICE_STORAGE)")
    return chief_url
