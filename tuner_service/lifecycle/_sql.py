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
from dataclasses import dataclass
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


def next_waiting(session: Session, study_id: int) -> models.TrialModel | None:
    """The study's oldest WAITING trial, locked for this transaction (PostgreSQL: ``FOR UPDATE
    SKIP LOCKED``, so concurrent claims take different rows; SQLite: the transaction already
    holds the write lock)."""
    return (session.query(models.TrialModel)
            .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.WAITING)
            .order_by(models.TrialModel.trial_id).limit(1).with_for_update(skip_locked=True).one_or_none())


def waiting_ids(session: Session, study_id: int, limit: int = 8) -> list[int]:
    """Ids of up to ``limit`` WAITING trials, oldest first (one indexed query)."""
    rows = session.execute(
        select(models.TrialModel.trial_id)
        .where(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.WAITING)
        .order_by(models.TrialModel.trial_id).limit(limit)
    ).all()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class NewTrial:
    trial_id: int
    number: int
    datetime_start: dt.datetime | None  # local time, as FrozenTrial holds it


def new_trial(session: Session, study_id: int, state: TrialState) -> NewTrial:
    """Insert a trial numbered after every earlier one of its study: the study row is locked
    first (as Optuna's ``create_new_trial`` does; SQLite: the write lock), so two creators
    cannot take one number. Plain statements (no ORM unit of work): this is every claim's."""
    t, st = models.TrialModel.__table__, models.StudyModel.__table__
    session.execute(select(st.c.study_id).where(st.c.study_id == study_id).with_for_update())
    number = session.execute(select(func.count()).select_from(t).where(t.c.study_id == study_id)).scalar_one()
    start = dt.datetime.now() if state == TrialState.RUNNING else None
    utc = None if start is None else start.astimezone(dt.timezone.utc).replace(tzinfo=None)
    trial_id = session.execute(insert(t).values(study_id=study_id, number=number, state=state,
                                                datetime_start=utc).returning(t.c.trial_id)).scalar_one()
    return NewTrial(trial_id, int(number), start)


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


def beat(session: Session, trial_id: int, *, fresh: bool = False) -> None:
    """Write the trial's heartbeat row (insert, or refresh an old one) at the database's now();
    ``fresh``: a trial created in this transaction has none yet."""
    hb = models.TrialHeartbeatModel
    done = 0 if fresh else session.execute(update(hb).where(hb.trial_id == trial_id).values(heartbeat=func.now())).rowcount
    if not done:
        session.execute(insert(hb).values(trial_id=trial_id, heartbeat=func.now()))


def put_params_internal(session: Session, trial_id: int, params: list[tuple[str, float, BaseDistribution]]) -> None:
    """Parameters in Optuna's internal representation, one insert."""
    if params:
        session.execute(insert(models.TrialParamModel), [
            {"trial_id": trial_id, "param_name": name, "param_value": internal,
             "distribution_json": distribution_to_json(dist)} for name, internal, dist in params])


def study_distributions(session: Session, study_id: int, names: list[str]) -> dict[str, BaseDistribution]:
    """The distribution each of ``names`` already has in the study (any trial), one query."""
    from optuna.distributions import json_to_distribution

    if not names:
        return {}
    t, p = models.TrialModel, models.TrialParamModel
    rows = session.execute(select(p.param_name, p.distribution_json).join(t, t.trial_id == p.trial_id)
                           .where(t.study_id == study_id, p.param_name.in_(names)).distinct()).all()
    return {name: json_to_distribution(j) for name, j in rows}


def put_intermediate(session: Session, trial_id: int, values: dict[int, float], *, fresh: bool = False) -> None:
    """Per-epoch values (Optuna's encoding of NaN and infinities), inserted or replaced;
    ``fresh``: steps never written before, one insert."""
    iv = models.TrialIntermediateValueModel
    if fresh:
        if values:
            session.execute(insert(iv), [
                dict(zip(("trial_id", "step", "intermediate_value", "intermediate_value_type"),
                         (trial_id, step, *iv.intermediate_value_to_stored_repr(float(value)))))
                for step, value in values.items()])
        return
    for step, value in values.items():
        stored, kind = iv.intermediate_value_to_stored_repr(float(value))
        row = session.query(iv).filter(iv.trial_id == trial_id, iv.step == step).one_or_none()
        if row is None:
            session.add(iv(trial_id=trial_id, step=step, intermediate_value=stored, intermediate_value_type=kind))
        else:
            row.intermediate_value, row.intermediate_value_type = stored, kind


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
