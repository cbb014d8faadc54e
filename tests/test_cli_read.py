"""The read commands (ls, status, best, trials): tables that survive pipes, answers equal to
Optuna's, no Optuna import, errors in one line (or the full traceback with --debug)."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ENV, cli
from dashboard_support import make_study
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from submitted import TRIALS, Submitted

from tuner_service import queries
from tuner_service.storage import open_storage
from tuner_service.study import add_budget

NO_COLUMNS = {k: v for k, v in ENV.items() if k != "COLUMNS"}


def shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A real shell pipeline, as a user types it."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env={**NO_COLUMNS, **(env or {})}, timeout=120)


def tuner(args: str) -> str:
    return f"{sys.executable} -m tuner_service {args}"


def parse_plain(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Split the plain table at the columns' start offsets (taken from the header)."""
    header, *lines = text.rstrip("\n").split("\n")
    names = header.split()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    rows = []
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        rows.append(dict(zip(names, cells)))
    return names, rows


# ---------------------------------------------------------------------------- piped output


@pytest.mark.parametrize("columns", [None, "40"])
def test_trials_piped_through_cat_keeps_every_column(submitted: Submitted, columns: str | None) -> None:
    env = {"COLUMNS": columns} if columns else {}
    piped = shell(f"{tuner('trials')} {submitted.name} --storage {submitted.url} | cat", submitted.directory, env)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    as_json = json.loads(cli("trials", submitted.name, "--storage", submitted.url, "-f", "json").stdout)
    params = sorted({p for r in as_json for p in r["params"]})
    names, rows = parse_plain(piped.stdout)
    assert names == ["number", "state", "value", "best_epoch", "duration_s", *(f"param_{p}" for p in params)]
    assert "…" not in piped.stdout and len(rows) == TRIALS == len(as_json)
    for row, expected in zip(rows, as_json):
        assert row["number"] == str(expected["number"]) and row["state"] == expected["state"]
        assert float(row["value"]) == pytest.approx(expected["value"], rel=1e-5)
        assert row["best_epoch"] == str(expected["best_epoch"])
        for p in params:
            value = expected["params"].get(p)
            assert row[f"param_{p}"] == ("-" if value is None else f"{value:.6g}" if isinstance(value, float)
                                         else str(value))


def test_ls_status_best_piped_are_complete(submitted: Submitted) -> None:
    url, name, cwd = submitted.url, submitted.name, submitted.directory
    best = json.loads(cli("best", name, "--storage", url, "-f", "json").stdout)
    out = shell(f"{tuner('ls')} --storage {url} | cat", cwd, {"COLUMNS": "30"})
    names, rows = parse_plain(out.stdout)
    assert names[-1] == "best_value" and rows[0]["name"] == name
    assert float(rows[0]["best_value"]) == pytest.approx(best["value"], rel=1e-5)
    assert rows[0]["complete"] == str(TRIALS)

    out = shell(f"{tuner('status')} {name} --storage {url} > status.txt && cat status.txt", cwd, {"COLUMNS": "30"})
    lines = out.stdout.splitlines()
    assert all(":" in line for line in lines)  # one "key: value" line each, none wrapped
    params = next(line for line in lines if line.startswith("best_params:"))
    for key, value in best["params"].items():
        assert f"{key}={value:.6g}" in params if isinstance(value, float) else f"{key}={value}" in params

    out = shell(f"{tuner('best')} {name} --storage {url} | cat", cwd, {"COLUMNS": "30"})
    head, table = out.stdout.split("\n", 1)
    assert head.startswith(f"best trial #{best['number']} of {name!r}")
    names, rows = parse_plain(table)
    assert names == ["parameter", "value"] and {r["parameter"] for r in rows} == set(best["params"])


def test_narrow_terminal_gets_one_block_per_row(submitted: Submitted) -> None:
    """On a terminal too narrow for the table, every value is still printed, one block per trial."""
    if shutil.which("script") is None:
        pytest.fail("needs util-linux's `script` to run the CLI on a pseudo-terminal (apt-get install bsdutils)")
    command = f"{tuner('trials')} {submitted.name} --storage {submitted.url}"
    out = shell(f"script -qec {shlex.quote(command)} /dev/null", submitted.directory, {"COLUMNS": "50"})
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout.replace("\r", "")
    assert text.count("-[ ") == TRIALS and "…" not in text
    assert all(len(line) <= 50 for line in text.splitlines())


# ---------------------------------------------------------------------------- the SQL reader


def test_read_commands_do_not_import_optuna(submitted: Submitted) -> None:
    code = ("import sys; from tuner_service.cli import main; sys.argv = ['tuner-service'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in ('optuna', 'alembic', 'numpy', 'sqlalchemy') if m in sys.modules))")
    for args in (["ls"], ["status", submitted.name], ["best", submitted.name], ["trials", submitted.name]):
        out = subprocess.run([sys.executable, "-c", code, *args, "--storage", submitted.url], capture_output=True,
                             text=True, env=ENV, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "IMPORTED []" in out.stdout, (args, out.stdout)


def everything(url: str, name: str) -> dict[str, Any]:
    return {"list": queries.list_studies(url), "status": queries.status(name, url), "best": queries.best(name, url),
            "trials": queries.trials(name, url), "top": queries.trials(name, url, top=2)}


def through_optuna(monkeypatch: pytest.MonkeyPatch, url: str, name: str) -> dict[str, Any]:
    with monkeypatch.context() as m:
        m.setattr(queries._SqlReader, "schema_known", lambda self: False)
        return everything(url, name)


def assert_same(sql: dict[str, Any], reference: dict[str, Any]) -> None:
    # Durations: Optuna's datetimes and the stored ones differ by the local-time conversion only.
    for key in ("trials", "top"):
        for a, b in zip(sql[key], reference[key], strict=True):
            assert a.pop("duration_s") == pytest.approx(b.pop("duration_s"), abs=1e-3)
    assert json.dumps(sql, sort_keys=True, default=str) == json.dumps(reference, sort_keys=True, default=str)


def test_sql_reader_agrees_with_optuna_on_a_submitted_study(submitted: Submitted,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sql = everything(submitted.url, submitted.name)
    assert sql["status"]["complete"] == TRIALS and len(sql["trials"]) == TRIALS
    assert_same(sql, through_optuna(monkeypatch, submitted.url, submitted.name))


def every_state_study(url: str) -> str:
    """A study with every trial state, a retried failure, +inf, categorical and log params, a budget."""
    storage = open_storage(url)
    study = make_study(storage, "states")
    dists = {"act": CategoricalDistribution(["relu", None, 3]), "lr": FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"act": None, "lr": 0.01}, distributions=dists,
                                 user_attrs={"fail_reason": "fit raised ValueError: shapes\nsecond line"}))
    number = study.trials[-1].number
    study.ask()  # RUNNING (before the WAITING retry is added: ask() would claim it)
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"retry_history": [number]}))
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.5, params={"act": 3, "lr": 0.001},
                                 distributions=dists, intermediate_values={1: 0.5}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"act": "relu", "lr": 0.02}, distributions=dists))
    study.add_trial(create_trial(value=math.inf, params={"act": "relu", "lr": 0.05}, distributions=dists))
    add_budget(storage, study._study_id, 4)
    study.set_user_attr("retrain", {"test_metrics": {"accuracy": 0.9}, "model_path": "m/model.keras"})
    storage.engine.dispose()
    return "states"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sql_reader_agrees_with_optuna_on_every_state(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'states.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    name = every_state_study(url)
    sql = everything(url, name)
    s = sql["status"]
    assert (s["complete"], s["pruned"], s["failed"], s["retried"], s["running"], s["waiting"]) == (6, 1, 1, 1, 1, 5)
    assert s["best_value"] == math.inf and s["retrained_test_metrics"] == {"accuracy": 0.9}
    categorical = [r["params"]["act"] for r in sql["trials"] if "act" in r["params"]]
    assert categorical == [None, 3, "relu", "relu"]
    assert_same(sql, through_optuna(monkeypatch, url, name))


def test_sql_is_used_only_on_the_schema_it_was_written_for(tmp_path: Path) -> None:
    """A fresh database of the installed Optuna is read with SQL (when an Optuna upgrade changes
    its schema this fails: check the SQL in queries.py, then add the revision); any other
    revision goes through Optuna."""
    path = tmp_path / "s.db"
    make_study(optuna.storages.RDBStorage(f"sqlite:///{path}"), "s")
    reader = queries._SqlReader.connect(f"sqlite:///{path}")
    assert reader is not None and reader.schema_known()
    reader.close()
    with sqlite3.connect(path) as conn:  # as a later Optuna's migration would leave it
        conn.execute("UPDATE alembic_version SET version_num = 'v9.9.9.z'")
    reader = queries._SqlReader.connect(f"sqlite:///{path}")
    assert reader is not None and not reader.schema_known()
    reader.close()


# ---------------------------------------------------------------------------- errors


def test_missing_database_and_study_are_one_line(tmp_path: Path) -> None:
    for args, expected in ((["ls", "--storage", "sqlite:///nope.db"], "no database at 'nope.db'"),
                           (["trials", "x", "--storage", "sqlite:///nope.db"], "no database at")):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(optuna.storages.RDBStorage(url), "here")
    out = cli("best", "nope", "--storage", url, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no study named 'nope'; studies here: here"


def test_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    out = cli("ls", "--storage", "postgresql+psycopg://bob:s3cr3t@127.0.0.1:9/db", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot open storage 'postgresql+psycopg://bob:***@127.0.0.1:9/db'" in out.stderr
    assert "s3cr3t" not in out.stdout + out.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback_and_the_error_it_replaced(tmp_path: Path, how: str) -> None:
    args = ["ls", "--storage", "postgresql+psycopg://bob:s3cr3t@127.0.0.1:9/db"]
    out = cli("--debug", *args, cwd=tmp_path) if how == "flag" else cli(*args, cwd=tmp_path,
                                                                       env={"TUNER_SERVICE_DEBUG": "1"})
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr
    assert "psycopg.OperationalError" in out.stderr  # the driver's error, suppressed in the one-line form
    assert "StorageUnavailable" in out.stderr
    assert out.stderr.rstrip().splitlines()[-1].startswith("error: cannot open storage")
    assert "s3cr3t" not in out.stderr
