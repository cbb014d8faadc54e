"""Shared fixtures: a scratch working directory, study files, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Tests that compute reference results in-process (GridSearchCV) need the same TensorFlow
# settings as the service's workers.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pg_server: the throwaway PostgreSQL server (fixtures postgres_server, pg_url);
# skip_summary: the loud end-of-run list of skipped test groups and how to enable them;
# submitted: a study made by a real `tuner-service submit`, once per session (fixture submitted).
pytest_plugins = ["pg_server", "skip_summary", "submitted"]

MODELS = Path(__file__).parent / "models"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_study(directory: Path, name: str = "s", *, model: str | None = None, **fields: object) -> Path:
    """Write a study file using tests/models/tiny.py unless another model is given."""
    import yaml

    spec = {
        "name": name,
        "model": model or f"{MODELS / 'tiny.py'}:build_model",
        "data": {"source": "sklearn:digits"},
        "objective": "val_accuracy",
        "tuner": "random",
        "budget": {"max_trials": 2, "max_epochs": 2},
        "fit": {"batch_size": 64},
        "seed": 1,
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `tuner-service` command."""
    return subprocess.run(
        [sys.executable, "-m", "tuner_service", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})},
    )


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def rival_claims_the_same_point(study: object, rival: object, attr: str) -> list:
    """Race two workers on one point: when the next suggestion writes its claim (trial system
    attr ``attr``), ``rival`` (a RUNNING trial) writes the same claim at that instant. Returns
    the list the first claim is recorded in."""
    storage = study._storage  # type: ignore[attr-defined]
    real_set = storage.set_trial_system_attr
    claims: list = []

    def racing_set(trial_id: int, key: str, value: object) -> None:
        real_set(trial_id, key, value)
        if key == attr and not claims:
            claims.append(value)
            real_set(rival._trial_id, attr, value)  # type: ignore[attr-defined]

    storage.set_trial_system_attr = racing_set
    return claims
