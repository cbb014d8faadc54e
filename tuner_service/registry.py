"""The agents' registry: which agents run, where, on which studies, and whether to drain.

A second table of ours beside the budget counter, ``tuner_service_agents``: one row per
running agent, refreshed every few seconds (``last_seen``), so ``tuner-service status`` can
say which machines serve a study and ``tuner-service agent --drain`` can ask a running agent
(on any machine) to finish its trials, take no new ones and exit. A row whose ``last_seen`` is
old belongs to an agent that died; readers ignore it and the next agent start clears it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text, delete, insert, select, update

from tuner_service.queries import AGENT_GONE_SECONDS
from tuner_service.storage import rdb

#: An agent refreshes its row this often (seconds) ...
BEAT_SECONDS = 5.0
#: ... and a row older than this is an agent that is gone (the read commands use it too).
GONE_SECONDS = AGENT_GONE_SECONDS

AGENTS = Table(
    "tuner_service_agents", MetaData(),
    Column("agent_id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("studies", Text, nullable=False),  # JSON list of the studies its slots run now
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("drain", Boolean, nullable=False, default=False),
)
_READY: set[int] = set()
_log = logging.getLogger("tuner_service.registry")


def _engine(storage: Any) -> Any:
    engine = rdb(storage).engine
    if id(engine) not in _READY:
        from sqlalchemy import inspect
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

        try:
            AGENTS.metadata.create_all(engine, checkfirst=True)
        except (IntegrityError, ProgrammingError, OperationalError):
            if not inspect(engine).has_table(AGENTS.name):  # several agents raced to create it; one won
                raise
        _READY.add(id(engine))
    return engine


def beat(storage: Any, agent_id: str, *, host: str, pid: int, slots: int, studies: list[str],
         started_at: float) -> bool:
    """Insert or refresh this agent's row; returns whether somebody asked it to drain."""
    now = time.time()
    values = {"host": host, "pid": pid, "slots": slots, "studies": json.dumps(sorted(set(studies))),
              "last_seen": now}
    with _engine(storage).begin() as conn:
        done = conn.execute(update(AGENTS).where(AGENTS.c.agent_id == agent_id).values(**values)).rowcount
        if not done:
            conn.execute(delete(AGENTS).where(AGENTS.c.last_seen < now - GONE_SECONDS))
            conn.execute(insert(AGENTS).values(agent_id=agent_id, started_at=started_at, drain=False, **values))
            return False
        return bool(conn.execute(select(AGENTS.c.drain).where(AGENTS.c.agent_id == agent_id)).scalar())


def leave(storage: Any, agent_id: str) -> None:
    with _engine(storage).begin() as conn:
        conn.execute(delete(AGENTS).where(AGENTS.c.agent_id == agent_id))


def request_drain(storage: Any, host: str | None = None) -> list[dict[str, Any]]:
    """Ask the live agents on ``host`` (every host: None) to drain; returns the agents asked."""
    live = [a for a in agents(storage) if host is None or a["host"] == host]
    with _engine(storage).begin() as conn:
        for a in live:
            conn.execute(update(AGENTS).where(AGENTS.c.agent_id == a["agent_id"]).values(drain=True))
    return live


def agents(storage: Any) -> list[dict[str, Any]]:
    """The live agents (seen within ``GONE_SECONDS``), oldest first."""
    from tuner_service._rdb import _READING

    cutoff = time.time() - GONE_SECONDS
    token = _READING.set(True)  # SQLite: a read needs no write lock
    try:
        with _engine(storage).connect() as conn:
            rows = conn.execute(select(AGENTS).where(AGENTS.c.last_seen >= cutoff)
                                .order_by(AGENTS.c.started_at)).all()
    finally:
        _READING.reset(token)
    return [{**row._asdict(), "studies": json.loads(row.studies)} for row in rows]


class Membership:
    """One running agent's (or Ray driver's) row: refreshed every ``BEAT_SECONDS`` by
    :meth:`beat`, removed by :meth:`leave`. Bookkeeping for ``status`` and ``agent --drain``:
    a storage outage makes it log and carry on, never stops the driver."""

    def __init__(self, storage: Any, host: str, slots: int) -> None:
        import os

        self.storage, self.host, self.slots = storage, host, slots
        self.pid = os.getpid()
        self.started_at = time.time()
        self.agent_id = f"{host}/{self.pid}/{int(self.started_at)}"
        self._due = 0.0
        self._studies: set[str] | None = None

    def beat(self, studies: list[str]) -> bool:
        """Refresh the row every ``BEAT_SECONDS``, and at once when the studies served change
        (``status`` shows them as soon as a slot takes one); True when somebody asked to drain."""
        now, serving = time.monotonic(), {s for s in studies if s}
        if now < self._due and serving == self._studies:
            return False
        self._due, self._studies = now + BEAT_SECONDS, serving
        try:
            return beat(self.storage, self.agent_id, host=self.host, pid=self.pid, slots=self.slots,
                        studies=sorted(serving), started_at=self.started_at)
        except Exception as exc:
            _log.warning("could not refresh the agents registry: %s", exc)
            return False

    def leave(self) -> None:
        try:
            leave(self.storage, self.agent_id)
        except Exception as exc:
            _log.warning("could not leave the agents registry: %s", exc)


class RegistryMember:
    """The agents' registry as a driver (the agent, the Ray driver) uses it: its
    ``membership`` row, its ``slots`` (each serving ``.study``), its ``_draining`` flag and
    its ``_say`` are the driver's own."""

    membership: Membership
    slots: list[Any]
    _draining: bool
    _say: Callable[[str], None]

    def _beat_registry(self) -> None:
        """Refresh this process's row in the agents' registry (what `status` shows); a drain
        asked through it (`tuner-service agent --drain`) is heeded."""
        if self.membership.beat([s.study for s in self.slots]) and not self._draining:
            self._say("drain requested (tuner-service agent --drain)")
            self._draining = True

    def _leave_registry(self) -> None:
        self.membership.leave()
