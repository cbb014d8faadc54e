"""A study produced by a real ``tuner-service submit`` (real Keras trials), once per session.

The read commands, the report and the dashboard are tested on what the product writes, not
on what a fixture writes for it: a fixture that wrote the notes itself hid that the product
never did (issue 17).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli, write_study

NAME = "submitted"
TRIALS = 3
EPOCHS = 3


@dataclass(frozen=True)
class Submitted:
    url: str
    name: str
    directory: Path
    database: Path
    output: str


@pytest.fixture(scope="session")
def submitted(tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    """``tuner-service submit`` of the tiny conditional MLP: 3 random trials of 3 epochs."""
    directory = tmp_path_factory.mktemp("submitted")
    study_file = write_study(directory, NAME, budget={"max_trials": TRIALS, "max_epochs": EPOCHS})
    database = directory / "tuner.db"
    url = f"sqlite:///{database}"
    out = cli("submit", study_file, "--storage", url, cwd=directory, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return Submitted(url, NAME, directory, database, out.stdout)
