"""The read side: ``ls``, ``status``, ``best``, ``trials`` and their Python API functions.

These commands only read a few rows, yet going through Optuna costs most of a second before
the first query: ``import optuna`` (with NumPy and SQLAlchemy's ORM), then ``RDBStorage``,
which imports alembic to check the schema version (``python -X importtime``, see
``benchmarks/cli_startup.py``). So they read Optuna's tables with plain SQL instead: SQLite
through the standard library's ``sqlite3``, other databases through SQLAlchemy Core; the same
SQL text runs on both (named ``:parameters``). Optuna's schema is stable within an alembic
revision, so the SQL is used only on revisions it was written for
(:data:`KNOWN_SCHEMA_REVISIONS`); any other database (a newer Optuna's, or a file that is not
an Optuna database) is read through Optuna's own API, slower but always right.

Both readers produce the same :class:`StudyRecord`, and everything the commands print is
computed from it, once; ``tests/test_cli_read.py`` checks the two readers agree on the same
database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner_service.errors import BadInput, StorageUnavailable
from tuner_service.storage import STORAGE_ENV, check_url, mask_password, resolve_url, sqlite_path

if TYPE_CHECKING:
    import optuna

#: Optuna schema revisions (``alembic_version.version_num``) the SQL below was written for.
KNOWN_SCHEMA_REVISIONS = frozenset({"v3.2.0.a"})

from tuner_service import attrs as A  # noqa: E402  (names only: imports nothing)

SPEC_ATTR, ABORTED_ATTR = A.SPEC, A.ABORTED
#: Study system attrs an agent writes when it refuses a study (``refused:<host>``).
REFUSED_PREFIX = "refused:"
#: An agent's registry row older than this (seconds) belongs to an agent that is gone.
AGENT_GONE_SECONDS = 60.0
#: Per-trial user attrs the tables show; the long ones (history, summary) are never read.
ROW_ATTRS = (A.BEST_EPOCH, A.EPOCHS_RUN, A.PARAM_COUNT, A.HOST, A.PID, A.FAIL_REASON)
#: Trial attrs too long to return from ``best`` (the dashboard note has them).
LONG_ATTRS = ("model_summary", "history", "traceback")


@dataclass
class TrialRecord:
    """What the read commands need of one trial."""

    trial_id: int
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float | None] | None = None  # one per objective
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    retry_history: list[int] = field(default_factory=list)  # earlier attempts' numbers (Optuna's convention)
    duration_s: float | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # Optuna's: feasible when every one <= 0

    @property
    def value(self) -> float | None:
        """The first objective's value."""
        return self.values[0] if self.values else None

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


@dataclass
class StudyRecord:
    study_id: int
    name: str
    directions: list[str]  # "maximize" | "minimize", one per objective
    user_attrs: dict[str, Any]
    trials: list[TrialRecord]
    remaining: int  # budget slots not started (tuner_service_budget)
    refusals: dict[str, str] = field(default_factory=dict)  # agent host -> why it does not serve the study
    agents: list[dict[str, Any]] = field(default_factory=list)  # live agents whose slots run this study

    @property
    def direction(self) -> str:
        """The first objective's direction (a single-objective study's only one)."""
        return self.directions[0]

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    def objective_names(self) -> list[str]:
        spec = self.user_attrs.get(SPEC_ATTR) or {}
        names = [(spec.get("objective") or {}).get("name") or "value"]
        names += [o.get("name") for o in spec.get("more_objectives") or []]
        return names + [f"objective_{i}" for i in range(len(names), len(self.directions))]


# ---------------------------------------------------------------------------- answers


def list_studies(storage_url: str | None = None) -> list[dict[str, Any]]:
    """One row per study: tuner, direction, trial counts, best value, submission time."""
    rows = []
    with _open(storage_url) as reader:
        studies = reader.studies(attr_keys=())
    for s in studies:
        c = Counts.of(s)
        rows.append({
            "name": s.name,
            "tuner": s.user_attrs.get("tuner"),
            "direction": ", ".join(s.directions),
            "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
            "running": c.running, "waiting": c.waiting + s.remaining,
            "best_value": c.best.value if c.best else None,
            "submitted_at": s.user_attrs.get("submitted_at"),
        })
    return rows


def status(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """Progress, best trial and retrained model of one study."""
    with _open(storage_url) as reader:
        s = reader.study(name, attr_keys=(A.FAIL_REASON,))
    c = Counts.of(s)
    control = s.user_attrs.get(A.CONTROL)
    control_state = control.get("state") if isinstance(control, dict) else None
    state = ("aborted" if s.user_attrs.get(ABORTED_ATTR)
             else "done" if c.done else control_state if control_state
             else "running" if c.running else "waiting")
    info: dict[str, Any] = {
        "study": name,
        "state": state,
        "tuner": s.user_attrs.get("tuner"),
        "objective": ", ".join(f"{n} ({d})" for n, d in zip(s.objective_names(), s.directions)),
        "complete": c.complete, "pruned": c.pruned, "failed": c.failed, "retried": c.retried,
        "running": c.running, "waiting": c.waiting + s.remaining,
        "best_value": c.best.value if c.best else None,
        "best_trial": c.best.number if c.best else None,
        "best_params": c.best.params if c.best else None,
        "data": s.user_attrs.get("data"),
        "submitted_at": s.user_attrs.get("submitted_at"),
    }
    if s.multi_objective:  # no single best: the Pareto front
        for key in ("best_value", "best_trial", "best_params"):
            info.pop(key)
        info["pareto_front"] = [t.number for t in sorted(pareto_front(s), key=lambda t: t.number)]
    infeasible = sum(1 for t in s.trials if t.state == "COMPLETE" and not t.feasible)
    if infeasible:
        info["infeasible"] = infeasible
    if s.user_attrs.get(ABORTED_ATTR):
        info["aborted"] = s.user_attrs[ABORTED_ATTR]
    if c.failures:  # why each trial that stays FAIL stopped for good (e.g. "gave up after 3 retries")
        info["failures"] = {str(n): reason for n, reason in c.failures}
    if s.refusals:  # agents that will not run this study, and why
        info["refused_by"] = dict(s.refusals)
    if s.agents:  # the machines serving it now
        info["agents"] = [f"{a['host']} (pid {a['pid']}, {a['slots']} slot(s), seen {_ago(a['last_seen'])})"
                          for a in s.agents]
    busy = {k.removeprefix(A.GPU_BUSY_PREFIX): v for k, v in s.user_attrs.items()
            if k.startswith(A.GPU_BUSY_PREFIX) and isinstance(v, dict)}
    if busy:  # nvidia-smi's utilisation of the GPUs its runners used, sampled by the agents
        info["gpu_busy"] = "; ".join(
            f"{v['busy_pct']:g}% on {host} (GPU {v['gpus']}, {v['busy_gpu_s']:g} GPU-s busy in {v['samples']} "
            f"samples every {v['every_s']:g} s, at most {v['memory_used_mb_max']:g} MB used)"
            for host, v in sorted(busy.items()))
    retrain = s.user_attrs.get("retrain")
    if retrain:
        info["retrained_test_metrics"] = retrain.get("test_metrics")
        info["retrained_model"] = retrain.get("model_path")
    return info


def best(name: str, storage_url: str | None = None, *, study: optuna.Study | None = None) -> dict[str, Any]:
    """The best completed feasible trial (ties: the earliest): value, params, number, best epoch,
    attrs. A multi-objective study's answer is its Pareto front (:func:`front`)."""
    if study is not None:
        s = _record_from_study(study)
        if s.multi_objective:
            return front(s, name)
        t = _best_of(s, name)
        attrs = t.user_attrs
    else:
        with _open(storage_url) as reader:
            s = reader.study(name, attr_keys=(A.BEST_EPOCH,))
            if s.multi_objective:
                return front(s, name)
            t = _best_of(s, name)
            attrs = reader.trial_user_attrs(t.trial_id)
    spec = s.user_attrs.get(SPEC_ATTR) or {}
    return {
        "study": name,
        "number": t.number,
        "value": t.value,
        "objective": (spec.get("objective") or {}).get("name", "value"),
        "direction": s.direction,
        "params": t.params,
        "best_epoch": attrs.get("best_epoch"),
        "user_attrs": {k: v for k, v in attrs.items() if k not in LONG_ATTRS},
    }


def _best_of(s: StudyRecord, name: str) -> TrialRecord:
    done = [t for t in s.trials if t.state == "COMPLETE" and t.value is not None]
    if not done:
        raise BadInput(f"study {name!r} has no completed trial yet; run a worker or wait for one")
    feasible = [t for t in done if t.feasible]
    if not feasible:
        raise BadInput(f"study {name!r} has no trial that meets its constraints yet ({len(done)} completed, every "
                       "one infeasible); loosen constraints: or run more trials")
    return sorted(feasible, key=lambda t: (_signed(t.value, s.maximize), t.number))[0]


def pareto_front(s: StudyRecord) -> list[TrialRecord]:
    """The completed feasible trials no other completed feasible trial dominates (better or
    equal in every objective, better in one), by trial number; as Optuna's ``best_trials``."""
    done = [t for t in s.trials if t.state == "COMPLETE" and t.values and t.feasible
            and all(v is not None for v in t.values)]
    signs = [-1.0 if d == "maximize" else 1.0 for d in s.directions]
    keyed = [(t, [sign * float(v) for sign, v in zip(signs, t.values)]) for t in done]  # type: ignore[arg-type]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [t for t, k in keyed if not any(dominates(o, k) for _, o in keyed)]


def front(s: StudyRecord, name: str) -> dict[str, Any]:
    """A multi-objective study's answer: its Pareto front, best first by the first objective."""
    trials = pareto_front(s)
    if not trials:
        raise BadInput(f"study {name!r} has no completed trial that meets its constraints yet; run a worker or "
                       "wait for one")
    names = s.objective_names()
    trials.sort(key=lambda t: (_signed(t.value, s.maximize), t.number))
    return {
        "study": name,
        "objectives": names,
        "directions": list(s.directions),
        "front": [{"number": t.number, "values": dict(zip(names, t.values or [])), "params": t.params,
                   "best_epoch": t.user_attrs.get(A.BEST_EPOCH)} for t in trials],
    }


def trials(name: str, storage_url: str | None = None, *, top: int | None = None) -> list[dict[str, Any]]:
    """Every trial of a study in order, or the ``top`` best completed ones."""
    with _open(storage_url) as reader:
        s = reader.study(name, attr_keys=ROW_ATTRS)
    chosen = s.trials
    if top is not None:
        done = [t for t in chosen if t.state == "COMPLETE" and t.value is not None and t.feasible]
        chosen = sorted(done, key=lambda t: (_signed(t.value, s.maximize), t.number))[:top]
    return [trial_row(t) for t in chosen]


def trial_row(t: TrialRecord) -> dict[str, Any]:
    a = t.user_attrs
    row = {
        "number": t.number,
        "state": t.state,
        "value": None if t.value is None or not math.isfinite(t.value) else t.value,
        "params": t.params,
        "best_epoch": a.get("best_epoch"),
        "epochs_run": a.get("epochs_run"),
        "duration_s": None if t.duration_s is None else round(t.duration_s, 3),
        "param_count": a.get("param_count"),
        "host": a.get("host"),
        "pid": a.get("pid"),
        "fail_reason": a.get("fail_reason"),
    }
    if t.values and len(t.values) > 1:
        row["values"] = t.values
    if t.constraints:
        row["feasible"] = t.feasible
    return row


def cv_results(name: str, storage_url: str | None = None) -> list[dict[str, Any]] | None:
    """For grid studies: rows shaped like ``GridSearchCV.cv_results_``; None for other tuners."""
    with _open(storage_url) as reader:
        s = reader.study(name, attr_keys=(), with_trials=False)
    if s.user_attrs.get("tuner") != "grid":
        return None
    # The grid's rows need Optuna's trials (every fold's attrs): the slow path, for this export only.
    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage
    from tuner_service.tuners.grid import cv_results_rows

    study = study_mod.load(open_storage(storage_url, create=False), name)
    return cv_results_rows(study.get_trials(deepcopy=False))


@dataclass
class Counts:
    """Trial states as the budget sees them; the one place that counts (CLI, progress bar,
    ``--resume``, the keras-tuner API). A FAIL trial whose number is in another trial's
    ``retry_history`` was re-queued (``retried``); any other FAIL stays (``failed``, with its
    reason in ``failures``)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed for good (not re-queued)
    retried: int = 0  # failed and replaced by a retry
    running: int = 0
    waiting: int = 0
    remaining: int = 0  # budget slots not started yet (the counter)
    best: TrialRecord | None = None
    running_numbers: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (number, reason) of the final failures

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def budget_used(self) -> int:
        """Slots accounted for: finished, running or waiting (a retry replaces its failure)."""
        return self.finished + self.running + self.waiting

    @property
    def total(self) -> int:
        return self.budget_used + self.remaining

    @property
    def done(self) -> bool:
        return self.running == 0 and self.waiting == 0 and self.remaining == 0

    @classmethod
    def of(cls, s: StudyRecord) -> Counts:
        retried = {n for t in s.trials for n in t.retry_history}
        c = cls(remaining=s.remaining)
        for t in s.trials:
            if t.state == "COMPLETE":
                c.complete += 1
                if t.value is not None and t.feasible and (
                        c.best is None or c.best.value is None
                        or _signed(t.value, s.maximize) < _signed(c.best.value, s.maximize)):
                    c.best = t
            elif t.state == "PRUNED":
                c.pruned += 1
            elif t.state == "FAIL":
                if t.number in retried:
                    c.retried += 1
                else:
                    c.failed += 1
                    c.failures.append((t.number, str(t.user_attrs.get(A.FAIL_REASON) or "no reason recorded")))
            elif t.state == "RUNNING":
                c.running += 1
                c.running_numbers.append(t.number)
            elif t.state == "WAITING":
                c.waiting += 1
        return c

    @classmethod
    def for_study(cls, study: optuna.Study) -> Counts:
        """Counts of an open Optuna study, budget counter included."""
        return cls.of(_record_from_study(study))

    @classmethod
    def of_trials(cls, trials: Sequence[Any], *, maximize: bool = True) -> Counts:
        """Counts of a list of Optuna ``FrozenTrial`` (no budget counter: ``remaining`` is 0)."""
        records = [_record_from_trial(t) for t in trials]
        return cls.of(StudyRecord(-1, "", "maximize" if maximize else "minimize", {}, records, 0))


def _ago(unix: float) -> str:
    import time

    return f"{max(0.0, time.time() - unix):.0f} s ago"


def _signed(value: float | None, maximize: bool) -> float:
    assert value is not None
    return -value if maximize else value


# ---------------------------------------------------------------------------- readers


class _Reader:
    """Loads :class:`StudyRecord` objects from one storage."""

    def study_names(self) -> list[str]:
        raise NotImplementedError

    def study(self, name: str, *, attr_keys: Sequence[str], with_trials: bool = True) -> StudyRecord:
        raise NotImplementedError

    def studies(self, *, attr_keys: Sequence[str]) -> list[StudyRecord]:
        return [self.study(n, attr_keys=attr_keys) for n in self.study_names()]

    def trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def missing(self, name: str) -> BadInput:
        names = sorted(self.study_names())
        hint = f"; studies here: {', '.join(names[:10])}" if names else "; this storage has no studies"
        return BadInput(f"no study named {name!r}{hint}")


def peek_study_attrs(storage_url: str, name: str) -> dict[str, Any] | None:
    """Study ``name``'s user attrs by plain SQL, or None (no database, no tables, no study,
    unreachable). Never creates or upgrades anything: safe while another process is creating
    the database (Optuna's table creation is not safe to run concurrently)."""
    url = resolve_url(storage_url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        reader = _SqlReader.connect(url)
    except Exception:
        return None
    if reader is None:
        return None
    try:
        found = reader._rows_if_table("SELECT study_id FROM studies WHERE study_name = :name", name=name)
        if not found:
            return None
        rows = reader._rows_if_table("SELECT key, value_json FROM study_user_attributes WHERE study_id = :sid",
                                     sid=found[0][0]) or []
        return {k: json.loads(v) for k, v in rows}
    finally:
        reader.close()


@contextmanager
def _open(storage_url: str | None) -> Iterator[_Reader]:
    """The SQL reader when the database has a schema it knows, else Optuna's; closed after."""
    url = resolve_url(storage_url)
    check_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():  # the same refusal as open_storage(create=False)
        raise BadInput(
            f"no database at {str(path)!r}; check --storage (or ${STORAGE_ENV}) or submit a study first"
        )
    sql = _SqlReader.connect(url)
    reader: _Reader
    if sql is not None and sql.schema_known():
        reader = sql
    else:
        if sql is not None:
            sql.close()
        reader = _OptunaReader(url)
    try:
        yield reader
    finally:
        reader.close()


class _SqlReader(_Reader):
    """Plain SQL on Optuna's tables; ``execute(sql, params)`` is sqlite3's or SQLAlchemy's."""

    def __init__(self, execute: Callable[[str, dict[str, Any]], list[Any]], close: Callable[[], None],
                 savepoint: Callable[[], Any] | None = None) -> None:
        self._execute = execute
        self.close = close  # type: ignore[method-assign]
        self._savepoint = savepoint  # PostgreSQL: a failed query must not abort the reader's transaction

    @classmethod
    def connect(cls, url: str) -> _SqlReader | None:
        path = sqlite_path(url)
        if path is not None:
            import sqlite3

            # A file path, not a URI: query options of the URL (e.g. timeout) are the engine's.
            conn = sqlite3.connect(str(path), timeout=60)
            return cls(lambda sql, params: conn.execute(sql, params).fetchall(), conn.close)
        if url.startswith("sqlite"):
            return None  # in-memory: nothing to read but through Optuna
        try:
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            engine = sqlalchemy.create_engine(url, poolclass=NullPool)
            connection = engine.connect()
        except Exception as exc:  # a driver error, a refused connection, bad credentials
            raise StorageUnavailable(
                f"cannot open storage {mask_password(url)!r}: {mask_password(_first_line(exc))}; "
                "check the URL, that the server is running and the credentials"
            ) from None
        text = sqlalchemy.text

        def close() -> None:
            connection.close()
            engine.dispose()

        return cls(lambda sql, params: connection.execute(text(sql), params).fetchall(), close, connection.begin_nested)

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        return list(self._execute(sql, params))

    def _rows_if_table(self, sql: str, **params: Any) -> list[Any] | None:
        """``_rows``, or None when a table it reads does not exist (our tables are created on
        first use: no agent, no budget yet)."""
        try:
            if self._savepoint is None:
                return self._rows(sql, **params)
            with self._savepoint():
                return self._rows(sql, **params)
        except Exception:
            return None

    def schema_known(self) -> bool:
        try:
            rows = self._rows("SELECT version_num FROM alembic_version")
        except Exception:  # no such table: not an Optuna database (or not yet created)
            return False
        return bool(rows) and all(r[0] in KNOWN_SCHEMA_REVISIONS for r in rows)

    def study_names(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT study_name FROM studies ORDER BY study_id")]

    def studies(self, *, attr_keys: Sequence[str]) -> list[StudyRecord]:
        return [self._load(sid, name, attr_keys, True)
                for sid, name in self._rows("SELECT study_id, study_name FROM studies ORDER BY study_id")]

    def study(self, name: str, *, attr_keys: Sequence[str], with_trials: bool = True) -> StudyRecord:
        found = self._rows("SELECT study_id FROM studies WHERE study_name = :name", name=name)
        if not found:
            raise self.missing(name)
        return self._load(found[0][0], name, attr_keys, with_trials)

    def trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT key, value_json FROM trial_user_attributes WHERE trial_id = :tid", tid=trial_id)
        return {k: json.loads(v) for k, v in rows}

    def _load(self, sid: int, name: str, attr_keys: Sequence[str], with_trials: bool) -> StudyRecord:
        direction = self._rows("SELECT direction FROM study_directions WHERE study_id = :sid ORDER BY objective",
                               sid=sid)
        attrs = {k: json.loads(v) for k, v in
                 self._rows("SELECT key, value_json FROM study_user_attributes WHERE study_id = :sid", sid=sid)}
        trials = self._trials(sid, attr_keys) if with_trials else []
        refusals = {k.removeprefix(REFUSED_PREFIX): json.loads(v)["reason"] for k, v in self._rows(
            "SELECT key, value_json FROM study_system_attributes WHERE study_id = :sid AND key LIKE :prefix",
            sid=sid, prefix=f"{REFUSED_PREFIX}%") if json.loads(v)}
        directions = [str(d[0]).lower().removeprefix("studydirection.") for d in direction] or ["minimize"]
        return StudyRecord(sid, name, directions, attrs, trials, self._remaining(sid), refusals, self._agents(name))

    def _trials(self, sid: int, attr_keys: Sequence[str]) -> list[TrialRecord]:
        by_id: dict[int, TrialRecord] = {}
        for tid, number, state, start, complete in self._rows(
                "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                "WHERE study_id = :sid ORDER BY trial_id", sid=sid):
            by_id[tid] = TrialRecord(tid, number, str(state), duration_s=_duration(start, complete))
        for tid, objective, value, value_type in self._rows(
                "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
                "JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = :sid ORDER BY v.objective", sid=sid):
            values = by_id[tid].values = by_id[tid].values or []
            values += [None] * (int(objective) + 1 - len(values))
            values[int(objective)] = _trial_value(value, str(value_type))
        for tid, pname, pvalue, dist in self._rows(
                "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json FROM trial_params p "
                "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = :sid ORDER BY p.param_id", sid=sid):
            by_id[tid].params[pname] = external_param(pvalue, dist)
        if attr_keys:
            keys = {f"k{i}": k for i, k in enumerate(attr_keys)}
            for tid, key, value in self._rows(
                    "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
                    "JOIN trials t ON t.trial_id = a.trial_id "
                    f"WHERE t.study_id = :sid AND a.key IN ({', '.join(':' + k for k in keys)})", sid=sid, **keys):
                by_id[tid].user_attrs[key] = json.loads(value)
        for tid, value in self._rows(
                "SELECT a.trial_id, a.value_json FROM trial_system_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                "WHERE t.study_id = :sid AND a.key = :key", sid=sid, key=A.RETRY_HISTORY):
            by_id[tid].retry_history = list(json.loads(value) or [])
        for tid, key, value in self._rows(
                "SELECT a.trial_id, a.key, a.value_json FROM trial_system_attributes a "
                "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :sid AND (a.key = 'constraints' "
                "OR a.key LIKE 'constraints:%')", sid=sid):
            by_id[tid].constraints.update(_constraints({key: json.loads(value)}))
        return list(by_id.values())

    def _agents(self, name: str) -> list[dict[str, Any]]:
        """Live agents (``tuner_service.registry``) whose slots run study ``name`` now."""
        import time

        rows = self._rows_if_table("SELECT host, pid, slots, studies, last_seen FROM tuner_service_agents "
                                   "WHERE last_seen >= :cutoff ORDER BY started_at",
                                   cutoff=time.time() - AGENT_GONE_SECONDS) or []
        return [{"host": h, "pid": p, "slots": n, "last_seen": seen} for h, p, n, studies, seen in rows
                if name in json.loads(studies)]

    def _remaining(self, sid: int) -> int:
        # No budget table: a study made by plain Optuna.
        rows = self._rows_if_table("SELECT remaining FROM tuner_service_budget WHERE study_id = :sid", sid=sid)
        return int(rows[0][0]) if rows else 0


class _OptunaReader(_Reader):
    """The same records through Optuna's API (databases whose schema the SQL does not know)."""

    def __init__(self, url: str) -> None:
        from tuner_service.storage import open_storage

        self.storage = open_storage(url, create=False)

    def close(self) -> None:
        self.storage.engine.dispose()

    def study_names(self) -> list[str]:
        return [s.study_name for s in self.storage.get_all_studies()]

    def study(self, name: str, *, attr_keys: Sequence[str], with_trials: bool = True) -> StudyRecord:
        import optuna

        if name not in self.study_names():
            raise self.missing(name)
        return _record_from_study(optuna.load_study(study_name=name, storage=self.storage))

    def trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return dict(self.storage.get_trial(trial_id).user_attrs)


def _record_from_trial(t: Any) -> TrialRecord:
    return TrialRecord(
        trial_id=t._trial_id, number=t.number, state=t.state.name,
        values=list(t.values) if t.values else None, params=dict(t.params), user_attrs=dict(t.user_attrs),
        retry_history=list(t.system_attrs.get(A.RETRY_HISTORY) or []),
        duration_s=t.duration.total_seconds() if t.duration is not None else None,
        constraints=_constraints(t.system_attrs),
    )


def _record_from_study(study: optuna.Study) -> StudyRecord:
    from tuner_service.study import remaining_budget

    trials = [_record_from_trial(t) for t in study.get_trials(deepcopy=False)]
    try:
        remaining = remaining_budget(study._storage, study._study_id)
    except Exception:  # not an RDB storage, or no budget table
        remaining = 0
    system = study._storage.get_study_system_attrs(study._study_id)
    refusals = {k.removeprefix(REFUSED_PREFIX): v["reason"] for k, v in system.items()
                if k.startswith(REFUSED_PREFIX) and v}
    try:
        from tuner_service.registry import agents

        serving = [a for a in agents(study._storage) if study.study_name in a["studies"]]
    except Exception:  # not an RDB storage
        serving = []
    return StudyRecord(study._study_id, study.study_name, [d.name.lower() for d in study.directions],
                       dict(study.user_attrs), trials, remaining, refusals, serving)


# ---------------------------------------------------------------------------- Optuna's encodings


def _constraints(system_attrs: dict[str, Any]) -> dict[str, float]:
    """Optuna's constraint values from trial system attrs: the old list (``constraints``) and
    ``constraints:<name>`` (``Trial.set_constraint``), as Optuna reads them."""
    out: dict[str, float] = {}
    for i, v in enumerate(system_attrs.get("constraints") or []):
        out[str(i)] = float(v)
    for key, v in system_attrs.items():
        if key.startswith("constraints:") and v is not None:
            out[key.split(":", 1)[1]] = float(v)
    return out


def external_param(internal: float, distribution_json: str) -> Any:
    """A stored parameter as the user sees it (``BaseDistribution.to_external_repr``):
    categorical values are stored as the index of the choice, integers as floats."""
    dist = json.loads(distribution_json)
    kind, attrs = dist.get("name"), dist.get("attributes") or {}
    if kind == "CategoricalDistribution":
        return attrs["choices"][int(internal)]
    if kind in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(internal)
    return float(internal)


def _trial_value(value: float | None, value_type: str) -> float | None:
    if value_type.endswith("INF_POS"):
        return math.inf
    if value_type.endswith("INF_NEG"):
        return -math.inf
    return None if value is None else float(value)


def _duration(start: Any, complete: Any) -> float | None:
    if start is None or complete is None:
        return None
    return (_datetime(complete) - _datetime(start)).total_seconds()


def _datetime(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
