"""The SQL under the lifecycle's transactions, on Optuna's own tables (and the budget table).

Each function takes the open :class:`sqlalchemy.orm.Session` of one transaction and never
commits: :func:`transaction` does, once, at the end. Optuna's public storage methods commit
their own sessions, so none is called inside a transaction; the ``*_without_commit`` helpers
of ``RDBStorage`` and its models are used instead (the Optuna versions the project pins).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import Column, Integer, MetaData, Table, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from tuner_service import attrs as A
from tuner_service.storage import rdb

# ---------------------------------------------------------------------------- transactions


@contextmanager
def transaction(storage: Any) -> Iterator[Session]:
    """One writing transaction on ``storage``'s engine: committed at the end, rolled back on
    any error (SQLite: ``BEGIN IMMEDIATE``, see :mod:`tuner_service._rdb`)."""
    session = Session(rdb(storage).engine)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read(storage: Any) -> Iterator[Session]:
    """A read-only transaction (SQLite: deferred, so it never waits for the write lock)."""
    from tuner_service._rdb import _READING

    token = _READING.set(True)
    session = Session(rdb(storage).engine)
    try:
        yield session
    finally:
        session.rollback()
        session.close()
        _READING.reset(token)


# ---------------------------------------------------------------------------- the budget counter


def _budget_table() -> Table:
    return Table(
        "tuner_service_budget", MetaData(),
        Column("study_id", Integer, primary_key=True, autoincrement=False),
        Column("remaining", Integer, nullable=False),
    )


BUDGET = _budget_table()
_BUDGET_READY: set[int] = set()  # engines whose table exists (create_all costs a query per call)


def ensure_budget_table(storage: Any) -> None:
    """Create ``tuner_service_budget`` (the one table of ours) once per engine."""
    engine = rdb(storage).engine
    if id(engine) in _BUDGET_READY:
        return
    from sqlalchemy import inspect
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    try:
        BUDGET.metadata.create_all(engine, checkfirst=True)
    except (IntegrityError, ProgrammingError, OperationalError):
        # Several processes on a fresh database raced to create it; one won.
        if not inspect(engine).has_table(BUDGET.name):
            raise
    _BUDGET_READY.add(id(engine))


def take_slot(session: Session, study_id: int) -> bool:
    """``remaining -= 1`` if a slot is left; atomic (SQLite: the write lock; PostgreSQL: the row lock)."""
    result = session.execute(update(BUDGET).where(BUDGET.c.study_id == study_id, BUDGET.c.remaining > 0)
                             .values(remaining=BUDGET.c.remaining - 1))
    return result.rowcount == 1


def add_slots(session: Session, study_id: int, n: int) -> None:
    row = session.execute(select(BUDGET.c.remaining).where(BUDGET.c.study_id == study_id)).first()
    if row is None:
        session.execute(insert(BUDGET).values(study_id=study_id, remaining=max(n, 0)))
    else:
        session.execute(update(BUDGET).where(BUDGET.c.study_id == study_id)
                        .values(remaining=max(int(row[0]) + n, 0)))


def remaining(session: Session, study_id: int) -> int:
    row = session.execute(select(BUDGET.c.remaining).where(BUDGET.c.study_id == study_id)).first()
    return int(row[0]) if row else 0


def drop_slots(session: Session, study_id: int) -> None:
    session.execute(delete(BUDGET).where(BUDGET.c.study_id == study_id))


# ---------------------------------------------------------------------------- the study's flags


def claims_blocked(session: Session, study_id: int) -> str | None:
    """Why the study starts no trial now: ``"paused"``, ``"stopped"`` (``tuner-service
    pause/stop``) or ``"aborted"``; None when it may. Read inside the claim's transaction."""
    ua = models.StudyUserAttributeModel
    rows = dict(session.execute(select(ua.key, ua.value_json).where(
        ua.study_id == study_id, ua.key.in_([A.CONTROL, A.ABORTED]))).all())
    if rows.get(A.ABORTED) not in (None, "null", '""'):
        return "aborted"
    control = json.loads(rows[A.CONTROL]) if rows.get(A.CONTROL) else None
    return control.get("state") if isinstance(control, dict) else None


# ---------------------------------------------------------------------------- trials


def lock_trial(session: Session, trial_id: int) -> models.TrialModel | None:
    """The trial's row, locked until the end of the transaction (PostgreSQL ``FOR UPDATE``)."""
    return session.query(models.TrialModel).filter(models.TrialModel.trial_id == trial_id).with_for_update().one_or_none()


def waiting_ids(session: Session, study_id: int, limit: int = 8) -> list[int]:
    """Ids of up to ``limit`` WAITING trials, oldest first (one indexed query)."""
    rows = session.execute(
        select(models.TrialModel.trial_id)
        .where(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.WAITING)
        .order_by(models.TrialModel.trial_id).limit(limit)
    ).all()
    return [r[0] for r in rows]


def new_trial(session: Session, storage: Any, study_id: int, state: TrialState) -> models.TrialModel:
    """Insert a trial numbered after every earlier one of its study (the study row is locked
    first, as Optuna's ``create_new_trial`` does, so two creators cannot take one number)."""
    models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
    trial = models.TrialModel(study_id=study_id, number=None, state=state,
                              datetime_start=dt.datetime.now() if state == TrialState.RUNNING else None)
    session.add(trial)
    session.flush()
    trial.number = trial.count_past_trials(session)
    session.flush()
    return trial


def put_params(session: Session, trial_id: int, params: dict[str, Any],
               distributions: dict[str, BaseDistribution]) -> None:
    for name, value in params.items():
        dist = distributions[name]
        session.add(models.TrialParamModel(trial_id=trial_id, param_name=name,
                                           param_value=dist.to_internal_repr(value),
                                           distribution_json=distribution_to_json(dist)))


def put_attrs(session: Session, trial_id: int, attrs: dict[str, Any], *, system: bool = False,
              fresh: bool = False) -> None:
    """Write trial attrs in one statement: a plain insert for a trial created in this
    transaction (``fresh``), else an upsert (SQLite and PostgreSQL; others one by one)."""
    if not attrs:
        return
    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    if fresh:
        session.execute(insert(model), rows)
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as upsert
        else:
            from sqlalchemy.dialects.postgresql import insert as upsert
        stmt = upsert(model).values(rows)
        session.execute(stmt.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                   set_={"value_json": stmt.excluded.value_json}))
        return
    for row in rows:
        found = session.query(model).filter(model.trial_id == trial_id, model.key == row["key"]).one_or_none()
        if found is None:
            session.add(model(**row))
        else:
            found.value_json = row["value_json"]


def beat(session: Session, trial_id: int) -> None:
    """Write the trial's heartbeat row (insert, or refresh an old one) at the database's now()."""
    hb = models.TrialHeartbeatModel
    done = session.execute(update(hb).where(hb.trial_id == trial_id).values(heartbeat=func.now())).rowcount
    if not done:
        session.execute(insert(hb).values(trial_id=trial_id, heartbeat=func.now()))


def set_values(session: Session, storage: Any, trial: models.TrialModel, values: list[float]) -> None:
    for objective, value in enumerate(values):
        rdb(storage)._set_trial_value_without_commit(session, trial, objective, value)


def finish_state(trial: models.TrialModel, state: TrialState) -> None:
    trial.state = state
    trial.datetime_complete = dt.datetime.now()


def attrs_of(session: Session, trial_id: int, *, system: bool) -> dict[str, Any]:
    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    rows = session.execute(select(model.key, model.value_json).where(model.trial_id == trial_id)).all()
    return {k: json.loads(v) for k, v in rows}


def params_of(session: Session, trial_id: int) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    from optuna.distributions import json_to_distribution

    params: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for row in session.query(models.TrialParamModel).filter(models.TrialParamModel.trial_id == trial_id):
        dist = json_to_distribution(row.distribution_json)
        params[row.param_name] = dist.to_external_repr(row.param_value)
        dists[row.param_name] = dist
    return params, dists


def running_with_beats(session: Session, study_id: int) -> list[tuple[int, dt.datetime | None, dt.datetime | None]]:
    """(trial id, last heartbeat, start in naive UTC) of the study's RUNNING trials."""
    hb = models.TrialHeartbeatModel
    t = models.TrialModel
    return [tuple(r) for r in session.execute(  # type: ignore[misc]
        select(t.trial_id, hb.heartbeat, t._datetime_start_utc)
        .select_from(t).outerjoin(hb, hb.trial_id == t.trial_id)
        .where(t.study_id == study_id, t.state == TrialState.RUNNING)
    ).all()]


def db_now(session: Session) -> dt.datetime:
    """The database's clock (what heartbeats are written with), naive like Optuna stores it."""
    now = session.execute(select(func.now())).scalar_one()
    if isinstance(now, str):  # SQLite returns text
        now = dt.datetime.fromisoformat(now)
    return now.replace(tzinfo=None)


def unexplained_failures(session: Session, study_id: int) -> list[int]:
    """FAIL trials with no ``fail_reason``: failed by code outside the lifecycle."""
    t, ua = models.TrialModel, models.TrialUserAttributeModel
    return [r[0] for r in session.execute(
        select(t.trial_id).select_from(t)
        .outerjoin(ua, and_(ua.trial_id == t.trial_id, ua.key == A.FAIL_REASON))
        .where(t.study_id == study_id, t.state == TrialState.FAIL, ua.trial_user_attribute_id.is_(None))
    ).all()]
