"""keras-tuner's official guides (adapted copies in tests/keras_tuner_guides/: data swapped for
digits or small arrays, budgets cut) run once with ``import keras_tuner`` and once with that
import changed to ``import tuner_service.keras_tuner``; both must succeed and print the same
lines, up to the values (:func:`structure`). The distributed guide also runs as a chief and
a worker on localhost, which must end with one study holding every trial of both."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV
from optuna.trial import TrialState

GUIDES = Path(__file__).parent / "keras_tuner_guides"
GUIDE_NAMES = ["getting_started", "custom_tuner", "failed_trials", "tailor_the_search_space", "visualize_tuning",
               "distributed_tuning"]
_IMPORTS = [
    (re.compile(r"^import keras_tuner$", re.M), "import tuner_service.keras_tuner as keras_tuner"),
    (re.compile(r"^import keras_tuner as (\w+)$", re.M), r"import tuner_service.keras_tuner as \1"),
    (re.compile(r"^from keras_tuner(\.[\w.]+)? import", re.M), r"from tuner_service.keras_tuner\1 import"),
]


def drop_in(source: str) -> str:
    """The guide with its keras_tuner imports changed to tuner_service.keras_tuner."""
    changed = 0
    for pattern, replacement in _IMPORTS:
        source, n = pattern.subn(replacement, source)
        changed += n
    assert changed, "the guide imports no keras_tuner"
    return source


def run_guide(name: str, impl: str, cwd: Path, env: dict[str, str] | None = None, *,
              background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    source = (GUIDES / f"{name}.py").read_text()
    script = cwd / f"{name}_{impl}.py"
    script.write_text(drop_in(source) if impl == "tuner_service" else source)
    (cwd / "saved").mkdir(exist_ok=True)  # where getting_started saves its models
    env = {**ENV, "PYTHONPATH": str(GUIDES), **(env or {})}
    if background:
        return subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TOKENS = [
    (re.compile(r"^Search: Running Trial #\d+$"), "Search: Running Trial #n"),
    (re.compile(r"^Value\s+\|Best Value So Far \|Hyperparameter$"), "<values table>"),
    (re.compile(r"^default configuration$"), "default configuration"),
    (re.compile(r"^Trial \d+ Complete \[\d\dh \d\dm \d\ds\]$"), "Trial n Complete [time]"),
    (re.compile(r"^Trial \S+ failed \d+ times\. \d+ retries left\.$"), "Trial id failed n times. k retries left."),
    (re.compile(r"^(Best \S+ So Far): "), r"\1: <value>"),
    (re.compile(r"^Total elapsed time: "), "Total elapsed time: <time>"),
    (re.compile(r"^Results in "), "Results in <dir>"),
    (re.compile(r"^Showing \d+ best trials$"), "Showing n best trials"),
    (re.compile(r"^Trial \S+ summary$"), "Trial id summary"),
    (re.compile(r"^Score: "), "Score: <value>"),
    (re.compile(r"^Model: "), "<model summary>"),
]
_SKIP = re.compile(r"^\s*$|━|^\s*\d+/\d+ |^Epoch \d+/\d+$|^[┃│├└┏┡┗╇]|^ (Total|Trainable|Non-trainable) params")


def structure(stdout: str) -> list[str]:
    """The printed lines as kinds: keras-tuner's fixed lines keep their words, values become
    placeholders, a table's or summary's rows one placeholder (their number depends on the
    drawn values of conditional hyperparameters), a traceback one placeholder, and Keras'
    progress bars and model summaries are left out."""
    out: list[str] = []
    in_traceback = False
    for line in stdout.splitlines():
        if _SKIP.search(line):
            continue
        token = None
        for pattern, replacement in _TOKENS:
            match = pattern.search(line)
            if match:
                token = match.expand(replacement)
                break
        if token is not None:
            in_traceback = False
        elif line.startswith("Traceback (most recent call last):"):
            in_traceback, token = True, "<traceback>"
        elif in_traceback:
            continue
        if token is None:
            if re.match(r"^.{18}\|.{18}\|\S+$", line):
                token = "<values table>"  # a row: merged with the header below
            elif re.match(r"^[\w/]+: ", line) and out and out[-1] in ("Hyperparameters:", "<hp values>"):
                token = "<hp values>"
            else:
                token = _NUMBER.sub("#", line.strip())
                token = re.sub(r"\{.*\}", "{...}", token)
        if out and token == out[-1] and token in ("<values table>", "<hp values>"):
            continue
        out.append(token)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDE_NAMES)
def test_guide_prints_what_keras_tuner_prints(guide: str, tmp_path: Path) -> None:
    results = {}
    for impl in ("keras_tuner", "tuner_service"):
        cwd = tmp_path / impl
        cwd.mkdir()
        result = run_guide(guide, impl, cwd)
        assert result.returncode == 0, f"{guide} with {impl}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        results[impl] = result
    expected, got = structure(results["keras_tuner"].stdout), structure(results["tuner_service"].stdout)
    assert "Search: Running Trial #n" in expected
    assert got == expected, "\n".join(_diff(expected, got))
    studies = optuna.get_all_study_summaries(f"sqlite:///{_db(tmp_path / 'tuner_service')}")
    assert studies and all(s.n_trials > 0 for s in studies)


def _db(cwd: Path) -> Path:
    found = sorted(cwd.rglob("*.db"), key=os.path.getmtime)
    assert found, f"no study database under {cwd}"
    return found[-1]


def _diff(expected: list[str], got: list[str]) -> list[str]:
    import difflib

    return list(difflib.unified_diff(expected, got, "keras_tuner", "tuner_service", lineterm="", n=2))[:80]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_distributed_guide_chief_and_worker_share_one_study(tmp_path: Path) -> None:
    """The worker starts first (it waits for the chief), both run trials of one study, and
    the worker's overwrite=True deletes nothing."""
    port = str(_free_port())
    group = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    worker = run_guide("distributed_tuning", "tuner_service", tmp_path, {**group, "KERASTUNER_TUNER_ID": "tuner0"},
                       background=True)
    time.sleep(3)
    assert worker.poll() is None, "the worker did not wait for the chief"
    chief = run_guide("distributed_tuning", "tuner_service", tmp_path, {**group, "KERASTUNER_TUNER_ID": "chief"},
                      background=True)
    outputs = {}
    for role, proc in (("chief", chief), ("worker", worker)):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{role}:\n{out[-2000:]}\n{err[-3000:]}"
        outputs[role] = out
    studies = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'results_dir' / 'mnist.db'}")
    assert [s.study_name for s in studies] == ["mnist"]
    study = optuna.load_study(study_name="mnist", storage=f"sqlite:///{tmp_path / 'results_dir' / 'mnist.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2  # keras-tuner's Hyperband count for max_epochs=2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ran = {t.user_attrs["tuner_id"] for t in trials}
    assert ran == {"chief", "tuner0"}, f"trials ran in {ran}"
    for role in ("chief", "worker"):
        assert outputs[role].count("Search: Running Trial #") == 1, outputs[role]
