"""Dashboard notes and learning-curve images: what they say, where they land, and that they never raise."""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
from dashboard_support import BEST_NUMBER, POINTS, history_for, make_study
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna_dashboard import get_note

from tuner_service import notes

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return make_study(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tuner.db'}"))


def test_study_note_has_best_params_data_spec_and_retrain(study: optuna.Study) -> None:
    notes.write_study_note(study)
    note = get_note(study)  # read back the way optuna-dashboard does: from the study's system attrs
    best = POINTS[BEST_NUMBER]
    assert f"in trial #{BEST_NUMBER} at epoch 5" in note
    for name, value in best.items():
        assert f"| {name} | {value} |" in note
    assert "| train | 1077 |" in note and "| test | 360 |" in note
    assert "```yaml\nname: digits-demo\n" in note and "n_startup_trials: 3" in note
    assert "Retrained model" not in note

    study.set_user_attr("retrain", {"test_metrics": {"accuracy": 0.9611, "loss": 0.12}, "trial": BEST_NUMBER,
                                    "epochs": 5, "trained_on": 1437, "model_path": "models/digits-demo/model.keras"})
    notes.write_study_note(study)  # again: overwrites, version bumps
    note = get_note(study)
    assert "### Retrained model" in note and "| accuracy | 0.9611 |" in note and "model.keras" in note
    assert note.count("## digits-demo") == 1


def test_study_note_shrinks_cleanly(study: optuna.Study) -> None:
    # Notes are stored in ~2 kB chunks; a shorter rewrite must not keep the old tail.
    study.set_user_attr("retrain", {"test_metrics": {f"metric_{i}": i / 7 for i in range(300)}})
    notes.write_study_note(study)
    assert len(get_note(study)) > 5000
    study.set_user_attr("retrain", None)
    notes.write_study_note(study)
    assert get_note(study) == notes.study_note_markdown(study)


def test_study_note_without_completed_trials(tmp_path: Path) -> None:
    s = make_study(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'e.db'}"), "empty", points=[])
    notes.write_study_note(s)
    assert "No completed trial yet" in get_note(s)


def test_trial_note_has_keras_facts(study: optuna.Study) -> None:
    trial = study.get_trials()[BEST_NUMBER]
    notes.write_trial_note(study, trial._trial_id)
    note = get_note(optuna.Trial(study, trial._trial_id))
    assert f"## Trial {BEST_NUMBER}" in note
    assert f"| parameters | {128 * 75} |" in note and "| best epoch | 5 |" in note
    assert "### Model summary" in note and "Total params: 9,600" in note
    assert get_note(study) == ""  # the trial note is its own, not the study's


def test_learning_curve_svg_is_valid_and_has_both_panels() -> None:
    history = history_for(64)
    history["loss"][2] = math.nan  # a diverged epoch leaves a gap, not a broken chart
    root = ET.fromstring(notes.learning_curve_svg(history, objective="val_accuracy", best_epoch=4))
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"loss", "accuracy", "training", "validation", "epoch"} <= texts
    # loss: training split in two by the NaN + validation; accuracy: training + validation
    assert len(list(root.iter(f"{SVG}polyline"))) == 5
    assert any(el.find(f"{SVG}title") is not None for el in root.iter(f"{SVG}line"))  # best-epoch marker


def test_learning_curve_svg_edge_cases() -> None:
    assert "no per-epoch history" in notes.learning_curve_svg({})
    one_epoch = ET.fromstring(notes.learning_curve_svg({"loss": [0.5], "val_loss": [0.6]}))
    assert len(list(one_epoch.iter(f"{SVG}circle"))) == 2
    # Without an objective the first non-loss metric is drawn.
    regression = notes.learning_curve_svg({"loss": [3, 2, 2, 2], "mae": [1.0, 0.9, 0.9, 0.9], "val_mae": [1, 1, 1, 1]})
    assert ">mae<" in regression


def test_upload_curves_to_running_and_finished_trials(study: optuna.Study, tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path)
    history = history_for(32)

    running = study.ask()  # as the worker does: upload before tell
    aid = notes.upload_trial_curves(study, running._trial_id, history, store)
    assert aid is not None
    (meta,) = get_all_artifact_meta(running, storage=study._storage)
    assert meta.mimetype == "image/svg+xml" and meta.filename == f"learning-curves-trial-{running.number}.svg"
    assert (tmp_path / aid).read_text().startswith("<svg")

    # A finished trial cannot take trial attrs; the dashboard's study-level record is used instead.
    done = study.get_trials()[0]
    aid = notes.upload_trial_curves(study, done._trial_id, history, store)
    assert aid is not None and (tmp_path / aid).is_file()
    assert f"dashboard:artifacts:{done._trial_id}:{aid}" in study._storage.get_study_system_attrs(study._study_id)


def test_failures_are_logged_never_raised(study: optuna.Study, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tuner_service.notes")
    assert notes.upload_trial_curves(study, 10_000, history_for(32), FileSystemArtifactStore(tmp_path)) is None
    notes.write_trial_note(study, 10_000)
    notes.write_study_note(object())  # type: ignore[arg-type]
    assert notes.upload_trial_curves(study, 1, history_for(32), None) is None  # no store: nothing to do, silently
    assert len(caplog.records) == 3, [r.getMessage() for r in caplog.records]
