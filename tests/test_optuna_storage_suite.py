"""Optuna's own storage test suite (``optuna.testing.pytest_storages.StorageTestCase``, shipped
with Optuna), run against the service's storage factory on SQLite and PostgreSQL, pickled and
not: the service's storage must be an Optuna storage in every respect Optuna tests.

Plus what pickling must keep (issue 12.10): a storage sent to another process keeps the SQLite
settings (WAL, ``BEGIN IMMEDIATE`` for writes, deferred reads), so claims stay atomic.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from tuner_service.storage import open_storage

VARIANTS = ["sqlite", "sqlite-pickled", pytest.param("postgresql", marks=pytest.mark.postgres),
            pytest.param("postgresql-pickled", marks=pytest.mark.postgres)]


def _open(request: pytest.FixtureRequest, tmp_path: Path, variant: str):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if variant.startswith("sqlite") else request.getfixturevalue("pg_url")
    storage = open_storage(url)
    return pickle.loads(pickle.dumps(storage)) if variant.endswith("pickled") else storage


class TestServiceStorage(StorageTestCase):
    @pytest.fixture(params=VARIANTS)
    def storage(self, request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
        return _open(request, tmp_path, request.param)


def test_a_pickled_sqlite_storage_keeps_its_settings(tmp_path: Path) -> None:
    storage = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{tmp_path / 'p.db'}")))
    statements: list[str] = []
    from sqlalchemy import event

    @event.listens_for(storage.engine, "before_cursor_execute")
    def _record(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    statements.clear()
    study_id = storage.create_new_study([__import__("optuna").study.StudyDirection.MINIMIZE], "s")
    assert "BEGIN IMMEDIATE" in statements, "a write must take the lock when its transaction starts"
    statements.clear()
    storage.get_all_trials(study_id)
    assert "BEGIN" in statements and "BEGIN IMMEDIATE" not in statements, "a read must not take the write lock"
