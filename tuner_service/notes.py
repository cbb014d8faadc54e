"""Keras-aware notes and learning-curve images for optuna-dashboard.

The dashboard shows a Markdown note per study and per trial and a trial's artifacts. This
module fills them with what a Keras user looks for: the submitted spec, the data split, the
best configuration so far and the retrained model's test score (study note); the model
summary, parameter count and best epoch (trial note); loss and objective per epoch, training
and validation, as an SVG image (trial artifact).

The trial lifecycle calls :func:`decorate_trial` once per finished trial, while the trial is
still RUNNING: the note (outcome, parameters, best epoch, a per-epoch table of every logged
metric, model summary, parameter count, fit time, device, failure reason) and the
learning-curve image. Long texts (history, summary, traceback) live in the note and the
image, not in one-line user attrs, so the dashboard's trial page fits the window.

Everything here is decoration. The public ``write_*``/``upload_*``/``decorate_*`` functions run
around trials and must never fail one, so they catch every error, log it and return. Nothing here imports Keras; the chart is a hand-written SVG so that no plotting
library (or headless browser, as plotly's image export needs) is required.
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import tempfile
import uuid
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.trial import FrozenTrial

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- study note


def write_study_note(study: optuna.Study) -> None:
    """Overwrite the study's dashboard note with :func:`study_note_markdown`; never raises."""
    try:
        from optuna_dashboard import save_note

        save_note(study, study_note_markdown(study))
    except Exception as exc:  # a note is not worth failing a trial or a submit for
        _log.warning("could not write the dashboard note of study %r: %s", getattr(study, "study_name", "?"), exc)


def study_note_markdown(study: optuna.Study) -> str:
    """The study note: best configuration, retrained model, data, tuner and spec."""
    import yaml

    from tuner_service.queries import _record_from_study

    attrs = study.user_attrs
    spec: dict[str, Any] = attrs.get("spec") or {}
    record = _record_from_study(study)
    names = record.objective_names()
    objectives = ", ".join(f"**{n}** ({d})" for n, d in zip(names, record.directions))
    lines = [f"## {study.study_name}", ""]
    lines.append(f"Objective{'s' if record.multi_objective else ''} {objectives}; tuner **{attrs.get('tuner') or '?'}**"
                 + (f"; submitted {attrs['submitted_at']}" if attrs.get("submitted_at") else "") + ".")
    if attrs.get("aborted"):
        lines += ["", f"**Aborted:** {attrs['aborted']}"]
    if record.multi_objective:
        lines += ["", "### Pareto front so far", ""] + _front_section(record)
    else:
        lines += ["", "### Best configuration so far", ""] + _best_section(record, names[0])
    if attrs.get("retrain"):
        lines += ["", "### Retrained model", ""] + _retrain_section(attrs["retrain"])
    if attrs.get("data"):
        lines += ["", "### Data", ""] + _data_section(attrs["data"])
    tuner = spec.get("tuner") or {}
    if tuner:
        lines += ["", "### Tuner", "", f"**{tuner.get('name', '?')}**"]
        options = tuner.get("options") or {}
        if options:
            lines += [""] + _table(("option", "value"), [(k, v) for k, v in options.items()])
    if spec:
        lines += ["", "### Spec", "", "```yaml", yaml.safe_dump(spec, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _tally(record: Any) -> str:
    from collections import Counter

    states = Counter(t.state for t in record.trials)
    return ", ".join(f"{states[k]} {k.lower()}" for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))


def _best_section(record: Any, objective: str) -> list[str]:
    """The best completed trial that meets the constraints (ties: the earliest, as ``best``)."""
    from tuner_service.queries import Counts

    best = Counts.of(record).best
    if best is None or best.value is None or not math.isfinite(best.value):
        return [f"No completed trial yet ({_tally(record)})."]
    epoch = best.user_attrs.get("best_epoch")
    head = (f"**{objective} = {_fmt(best.value)}** in trial #{best.number}"
            + (f" at epoch {epoch}" if epoch else "") + f" ({_tally(record)}).")
    return [head, ""] + _table(("parameter", "value"), sorted(best.params.items()))


def _front_section(record: Any) -> list[str]:
    """A multi-objective study's Pareto front: one row per trial, its values and parameters."""
    from tuner_service.queries import pareto_front

    front = pareto_front(record)
    if not front:
        return [f"No completed trial that meets the constraints yet ({_tally(record)})."]
    names = record.objective_names()
    params = sorted({p for t in front for p in t.params})
    header = "| trial | " + " | ".join(names + params) + " |"
    rows = [header, "|" + "---|" * (1 + len(names) + len(params))]
    for t in sorted(front, key=lambda t: t.number):
        cells = [f"#{t.number}"] + [_cell(v) for v in (t.values or [])] + [_cell(t.params.get(p)) for p in params]
        rows.append("| " + " | ".join(cells) + " |")
    return [f"{len(front)} trial(s) on the front ({_tally(record)}); `tuner-service retrain NAME --trial N` or "
            "`--prefer METRIC` retrains one.", ""] + rows


def _retrain_section(retrain: dict[str, Any]) -> list[str]:
    lines = []
    facts = [("trial", retrain.get("trial")), ("epochs", retrain.get("epochs")),
             ("trained on", retrain.get("trained_on")), ("seeds", retrain.get("seeds")),
             ("created", retrain.get("created_at")), ("model", retrain.get("model_path"))]
    metrics = retrain.get("test_metrics") or {}
    if metrics:
        lines += _table(("test metric", "value"), sorted(metrics.items())) + [""]
    lines += _table(("fact", "value"), [(k, v) for k, v in facts if v is not None])
    return lines


def _data_section(data: dict[str, Any]) -> list[str]:
    sizes = [(k, data[k]) for k in ("train", "validation", "test") if k in data]
    lines = [f"Source `{data.get('source', '?')}`"
             + (f", task {data['task']}" if data.get("task") else "")
             + (f", sha256 `{str(data['hash'])[:12]}`" if data.get("hash") else "") + "."]
    if sizes:
        lines += [""] + _table(("split", "samples"), sizes)
    return lines


# ---------------------------------------------------------------------------- trial note

#: Short trial attrs the note's "run" table shows, in this order, with their labels.
_RUN_ATTRS = (
    ("param_count", "parameter count"),
    ("epochs_run", "epochs run"),
    ("fit_seconds", "fit time"),
    ("trial_seconds", "trial time"),
    ("device", "device"),
    ("keras_backend", "Keras backend"),
    ("host", "host"),
    ("pid", "pid"),
    ("slot", "slot"),
    ("resumed_from_epoch", "resumed from epoch"),
)
#: The per-epoch table shows every epoch up to this many; beyond, an even subsample that
#: always keeps the first, the best and the last epoch (the dashboard sends every trial's
#: note on every poll, so a note stays small).
MAX_EPOCH_ROWS = 25
#: Lines of the model summary and of a failure's traceback kept in the note.
MAX_SUMMARY_LINES = 80
MAX_TRACEBACK_LINES = 30


def decorate_trial(
    study: optuna.Study,
    trial_id: int,
    *,
    number: int,
    state: str,
    values: list[float] | None,
    params: dict[str, Any],
    attrs: dict[str, Any],
    details: dict[str, Any],
    objective: str | None,
    artifact_store: ArtifactStore | None,
) -> None:
    """Write the trial's dashboard note (and its learning-curve artifact); never raises.

    Called by the trial lifecycle for every trial that finishes (``state``: COMPLETE, PRUNED
    or FAIL) while the trial is still RUNNING, right before its outcome is committed: Optuna
    refuses writes to finished trials, and the artifact is recorded on the trial.

    ``attrs``: the short user attrs the trial keeps (``param_count``, ``best_epoch``,
    ``fit_seconds``, ``device``, ``fail_reason``...). ``details``: the long texts that are not
    user attrs: ``history`` (metric -> per-epoch values), ``model_summary``, ``traceback``.

    Cost: one transaction (the note's rows and the artifact's record) plus one small file; it
    does not read the study's other notes, so it stays the same at trial 10 and at trial
    10,000 (``benchmarks/trial_note.py``). optuna-dashboard's ``save_note`` reads every study
    system attr (every trial's note) to pick the next version, which grows with the study.
    """
    try:
        history = details.get("history") or {}
        body = trial_note_body(number=number, state=state, values=values, params=params, attrs=attrs,
                               details=details, objective=objective)
        artifact = None
        if artifact_store is not None and history:
            try:
                svg = learning_curve_svg(history, objective=objective, best_epoch=_best_epoch(attrs))
                artifact = _store_artifact(artifact_store, svg.encode("utf-8"), f"learning-curves-trial-{number}.svg",
                                           "image/svg+xml")
            except Exception as exc:  # the note is worth writing without its image
                _log.warning("could not store the learning curves of trial %s of %r: %s", number,
                             getattr(study, "study_name", "?"), exc)
        _write_fresh_note(study, trial_id, body, artifact)
    except Exception as exc:  # a note is not worth failing a trial for
        _log.warning("could not write the dashboard note of trial %s of %r: %s", number,
                     getattr(study, "study_name", "?"), exc)


def trial_note_body(
    *,
    number: int,
    state: str,
    values: list[float] | None,
    params: dict[str, Any],
    attrs: dict[str, Any],
    details: dict[str, Any],
    objective: str | None,
) -> str:
    """The trial note (Markdown): outcome, parameters, run facts, per-epoch table, model
    summary and, for a failed trial, its reason and the end of its traceback."""
    history: dict[str, list[float]] = details.get("history") or {}
    name = objective or "value"
    best_epoch = _best_epoch(attrs)
    lines = [f"## Trial {number}: {state.lower()}", ""]
    if values:
        lines.append(f"**{name} = {_fmt(values[0])}**" + (f" at epoch {best_epoch}" if best_epoch else "")
                     + (f" of {attrs['epochs_run']}" if attrs.get("epochs_run") else "") + ".")
    elif state == "PRUNED":
        at = attrs.get("epochs_run") or _epochs(history)
        best = _value_at(history, objective, best_epoch)
        lines.append("Pruned" + (f" after epoch {at}" if at else "")
                     + (f"; best {name} {_fmt(best)} at epoch {best_epoch}" if best is not None else "") + ".")
    if state == "FAIL":
        reason = attrs.get("fail_reason") or "no reason recorded"
        lines.append(f"**Failed:** {_one_line(str(reason))}")
    if params:
        lines += ["", "### Parameters", ""] + _table(("parameter", "value"), sorted(params.items()))
    facts: list[tuple[str, Any]] = []
    if best_epoch:
        facts.append(("best epoch", best_epoch))
        at_best = _value_at(history, objective, best_epoch)
        if at_best is not None:
            facts.append((f"{name} at best epoch", at_best))
    facts += [(label, _fact(key, attrs[key])) for key, label in _RUN_ATTRS if attrs.get(key) not in (None, "")]
    if facts:
        lines += ["", "### Run", ""] + _table(("fact", "value"), facts)
    if history:
        lines += ["", "### Per epoch", ""] + _epoch_table(history, best_epoch)
    summary = str(details.get("model_summary") or "").strip("\n")
    if summary:
        lines += ["", "### Model summary", ""] + _fenced(summary, MAX_SUMMARY_LINES, keep="head")
    trace = str(details.get("traceback") or "").strip("\n")
    if state == "FAIL" and trace:
        lines += ["", "### Traceback (last lines)", ""] + _fenced(trace, MAX_TRACEBACK_LINES, keep="tail")
    return "\n".join(lines) + "\n"


def _best_epoch(attrs: dict[str, Any]) -> int | None:
    epoch = attrs.get("best_epoch")
    if isinstance(epoch, int) and epoch > 0:
        return epoch
    return None


def _fact(key: str, value: Any) -> Any:
    if key == "param_count" and isinstance(value, int):
        return f"{value:,}"
    if key.endswith("_seconds") and isinstance(value, (int, float)):
        return f"{value:.3g} s"
    return value


def _value_at(history: dict[str, list[float]], objective: str | None, epoch: int | None) -> float | None:
    ys = history.get(objective or "") or []
    if epoch is None or not 1 <= epoch <= len(ys):
        return None
    return ys[epoch - 1]


def _epochs(history: dict[str, list[float]]) -> int:
    return max((len(ys) for ys in history.values()), default=0)


def _metric_order(history: dict[str, list[float]]) -> list[str]:
    """loss first, then each metric with its validation twin beside it, in Keras's order."""
    bases = list(dict.fromkeys(k.removeprefix("val_") for k in history))
    bases.sort(key=lambda b: b != "loss")
    return [k for b in bases for k in (b, f"val_{b}") if k in history]


def _epoch_table(history: dict[str, list[float]], best_epoch: int | None) -> list[str]:
    n = _epochs(history)
    if n > MAX_EPOCH_ROWS:
        step = math.ceil(n / (MAX_EPOCH_ROWS - 3))
        shown = sorted({1, n, *range(1, n + 1, step), *([best_epoch] if best_epoch else [])})
    else:
        shown = list(range(1, n + 1))
    metrics = _metric_order(history)
    out = ["| epoch | " + " | ".join(metrics) + " |", "|---:|" + "---:|" * len(metrics)]
    previous = 0
    for epoch in shown:
        if epoch - previous > 1:
            out.append("| … |" + " |" * len(metrics))
        previous = epoch
        cells = []
        for m in metrics:
            ys = history[m]
            cells.append(_fmt(ys[epoch - 1], 4) if epoch <= len(ys) else "")
        label = f"**{epoch}** (best)" if epoch == best_epoch else str(epoch)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _fenced(text: str, max_lines: int, *, keep: str) -> list[str]:
    lines = text.splitlines()
    if len(lines) > max_lines:
        dropped = len(lines) - max_lines
        lines = (lines[:max_lines] + [f"... ({dropped} more lines)"] if keep == "head"
                 else [f"... ({dropped} earlier lines)"] + lines[-max_lines:])
    # A fenced block keeps Keras's box-drawn table aligned; backticks inside would end it.
    return ["```text", *(line.replace("```", "'''") for line in lines), "```"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


# The dashboard keeps notes in study system attrs: "dashboard:<trial_id>:note_ver" and the body
# in ~2 kB chunks "dashboard:<trial_id>:note_str:<i>" (optuna_dashboard._note).


def _write_fresh_note(study: optuna.Study, trial_id: int, body: str, artifact: tuple[str, str] | None) -> None:
    """Store a trial's first note, version 1, and its artifact record, in one transaction.

    A trial's first note needs no read of the others: plain inserts, which fail with an
    integrity error if the trial has a note already (then the general path below runs).
    """
    from optuna.storages import RDBStorage
    from optuna_dashboard._note import note_ver_key, split_body

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    note_rows = {note_ver_key(trial_id): 1, **split_body(body, trial_id)}
    if isinstance(backend, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.trial import TrialState
        from sqlalchemy import insert, select
        from sqlalchemy.exc import IntegrityError

        trials = models.TrialModel.__table__
        try:
            with backend.engine.begin() as conn:
                state = conn.execute(select(trials.c.state).where(trials.c.trial_id == trial_id)).scalar_one_or_none()
                if state != TrialState.RUNNING:
                    raise ValueError(f"trial id {trial_id} is {getattr(state, 'name', state)}, not RUNNING")
                conn.execute(insert(models.StudySystemAttributeModel.__table__),
                             [{"study_id": study._study_id, "key": k, "value_json": json.dumps(v)}
                              for k, v in note_rows.items()])
                if artifact is not None:
                    conn.execute(insert(models.TrialSystemAttributeModel.__table__).values(
                        trial_id=trial_id, key=artifact[0], value_json=json.dumps(artifact[1])))
            return
        except IntegrityError:
            pass  # a note (or this artifact) exists already: the general path
    from optuna_dashboard._note import note_ver_key as ver_key
    from optuna_dashboard._note import save_note_with_version

    version = storage.get_study_system_attrs(study._study_id).get(ver_key(trial_id), 0) + 1
    save_note_with_version(storage, study._study_id, trial_id, version, body)
    if artifact is not None:
        storage.set_trial_system_attr(trial_id, artifact[0], artifact[1])


def _store_artifact(artifact_store: ArtifactStore, data: bytes, filename: str, mimetype: str) -> tuple[str, str]:
    """Write ``data`` to the store; returns the trial system attr (key, value) that records it,
    as ``optuna.artifacts.upload_artifact`` writes it (the value is the meta as a JSON string)."""
    import io
    from dataclasses import asdict

    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta

    artifact_id = str(uuid.uuid4())
    artifact_store.write(artifact_id, io.BytesIO(data))
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype, encoding=None)
    return ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta))


def write_trial_note(study: optuna.Study, trial: optuna.Trial | FrozenTrial | int) -> None:
    """Overwrite a finished or running trial's note from what its attrs hold; never raises.

    For trials recorded before :func:`decorate_trial` existed (their history and model summary
    are user attrs). ``trial``: the trial, or its storage id (``trial._trial_id``).
    """
    try:
        from optuna_dashboard import save_note

        trial_id = trial if isinstance(trial, int) else trial._trial_id
        frozen = study._storage.get_trial(trial_id)
        objective = ((study.user_attrs.get("spec") or {}).get("objective") or {}).get("name")
        save_note(_TrialHandle(study, trial_id), trial_note_markdown(frozen, objective))  # type: ignore[arg-type]
    except Exception as exc:  # a note is not worth failing a trial for
        _log.warning("could not write the dashboard note of a trial of %r: %s", getattr(study, "study_name", "?"), exc)


@dataclass
class _TrialHandle:
    """What ``optuna_dashboard.save_note`` reads from a trial: ``study``, ``storage``, ``_trial_id``.

    Building a real ``optuna.Trial`` for a trial id would call the sampler's ``before_trial``
    hook (our seeded random sampler reseeds there), a side effect a note must not have.
    """

    study: optuna.Study
    _trial_id: int

    @property
    def storage(self) -> Any:
        return self.study._storage


def trial_note_markdown(trial: FrozenTrial, objective: str | None = None) -> str:
    """:func:`trial_note_body` for a stored trial (long texts read from its user or system attrs)."""
    attrs = trial.user_attrs
    system = trial.system_attrs
    details = {key: attrs.get(key) or system.get(key) for key in ("history", "model_summary", "traceback")}
    return trial_note_body(number=trial.number, state=trial.state.name, values=trial.values, params=trial.params,
                           attrs=attrs, details=details, objective=objective)


# ---------------------------------------------------------------------------- learning curves


def upload_trial_curves(
    study: optuna.Study,
    trial_id: int,
    history: dict[str, list[float]],
    artifact_store: ArtifactStore | None,
    *,
    objective: str | None = None,
    best_epoch: int | None = None,
) -> str | None:
    """Attach :func:`learning_curve_svg` to the trial as an artifact; returns its id or None.

    Call it before ``study.tell`` when you can: Optuna refuses to change a finished trial, so
    for a finished one the image is registered the way optuna-dashboard's own uploads used to
    be (see :func:`upload_trial_file`). Never raises.
    """
    if artifact_store is None or not history:
        return None
    try:
        if objective is None:
            objective = ((study.user_attrs.get("spec") or {}).get("objective") or {}).get("name")
        svg = learning_curve_svg(history, objective=objective, best_epoch=best_epoch)
        number = study._storage.get_trial(trial_id).number
        with tempfile.TemporaryDirectory(prefix="tuner-curves-") as tmp:
            path = Path(tmp) / f"learning-curves-trial-{number}.svg"
            path.write_text(svg, encoding="utf-8")
            return upload_trial_file(study, trial_id, path, artifact_store, mimetype="image/svg+xml")
    except Exception as exc:  # an image is not worth failing a trial for
        _log.warning("could not upload the learning curves of trial id %s: %s", trial_id, exc)
        return None


def upload_trial_file(
    study: optuna.Study,
    trial_id: int,
    path: Path,
    artifact_store: ArtifactStore,
    *,
    mimetype: str | None = None,
) -> str:
    """Upload ``path`` as an artifact of the trial, running or finished; returns the artifact id.

    A running trial gets it through ``optuna.artifacts.upload_artifact``. Optuna refuses to
    set attributes of a finished trial, so for one the artifact is recorded in the study's
    system attrs under ``dashboard:artifacts:<trial_id>:<artifact_id>``, which optuna-dashboard
    still reads as the trial's artifact (it is where its own uploads went before Optuna had
    artifacts). Raises on failure; callers in a trial's path wrap it.
    """
    from optuna.artifacts import upload_artifact

    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if not frozen.state.is_finished():
        return upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=frozen,
                               storage=storage, mimetype=mimetype)
    artifact_id = str(uuid.uuid4())
    guessed, encoding = mimetypes.guess_type(path.name)
    meta = {"artifact_id": artifact_id, "filename": path.name,
            "mimetype": mimetype or guessed or "application/octet-stream", "encoding": encoding}
    with open(path, "rb") as f:
        artifact_store.write(artifact_id, f)
    storage.set_study_system_attr(study._study_id, f"dashboard:artifacts:{trial_id}:{artifact_id}", json.dumps(meta))
    return artifact_id


_PANEL_W, _PANEL_H = 380, 240
_MARGIN = {"left": 56, "right": 12, "top": 28, "bottom": 34}
_TRAIN_COLOUR, _VAL_COLOUR = "#1f77b4", "#d62728"


def learning_curve_svg(
    history: dict[str, list[float]],
    *,
    objective: str | None = None,
    best_epoch: int | None = None,
) -> str:
    """An SVG of loss and the objective per epoch, training (solid) and validation (dashed).

    One panel for ``loss`` and one for the objective's metric (``val_accuracy`` ->
    ``accuracy``; without an objective, the first other metric Keras logged). ``best_epoch``
    draws a dotted marker. Non-finite values leave a gap instead of breaking the scale.
    """
    panels = [name for name in ("loss", _metric_of(history, objective)) if name]
    panels = [p for p in dict.fromkeys(panels) if p in history or f"val_{p}" in history]
    width = _PANEL_W * max(1, len(panels))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_PANEL_H}" '
             f'viewBox="0 0 {width} {_PANEL_H}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{_PANEL_H}" fill="white"/>']
    if not panels:
        parts.append(f'<text x="{width / 2}" y="{_PANEL_H / 2}" text-anchor="middle">no per-epoch history</text>')
    for i, name in enumerate(panels):
        parts.append(_panel(history, name, i * _PANEL_W, best_epoch))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _metric_of(history: dict[str, list[float]], objective: str | None) -> str | None:
    if objective:
        return objective.removeprefix("val_")
    others = [k.removeprefix("val_") for k in history if k.removeprefix("val_") != "loss"]
    return others[0] if others else None


def _panel(history: dict[str, list[float]], name: str, x0: float, best_epoch: int | None) -> str:
    series = [(label, history.get(key) or [], colour, dash)
              for label, key, colour, dash in (("training", name, _TRAIN_COLOUR, ""),
                                               ("validation", f"val_{name}", _VAL_COLOUR, "5,3"))]
    values = [v for _, ys, _, _ in series for v in ys if _finite(v)]
    n = max(len(ys) for _, ys, _, _ in series)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:  # a flat line still needs a visible range
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    left, top = x0 + _MARGIN["left"], _MARGIN["top"]
    w = _PANEL_W - _MARGIN["left"] - _MARGIN["right"]
    h = _PANEL_H - _MARGIN["top"] - _MARGIN["bottom"]

    def px(epoch: int) -> float:  # epochs are 1-based on the axis, as Keras prints them
        return left + (w * (epoch - 1) / (n - 1) if n > 1 else w / 2)

    def py(v: float) -> float:
        return top + h * (hi - v) / (hi - lo)

    out = [f'<g><text x="{left}" y="16" font-weight="bold">{escape(name)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for v in _ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
    step = max(1, math.ceil(n / 8))
    for epoch in range(1, n + 1, step):
        out.append(f'<text x="{px(epoch):.1f}" y="{top + h + 14}" text-anchor="middle">{epoch}</text>')
    out.append(f'<text x="{left + w / 2}" y="{_PANEL_H - 4}" text-anchor="middle">epoch</text>')
    if best_epoch and 1 <= best_epoch <= n:
        out.append(f'<line x1="{px(best_epoch):.1f}" x2="{px(best_epoch):.1f}" y1="{top}" y2="{top + h}" '
                   f'stroke="#2ca02c" stroke-dasharray="2,2"><title>best epoch {best_epoch}</title></line>')
    legend_x = left + w - 170  # legend in the header row, where no data point can hide it
    for label, ys, colour, dash in series:
        if not ys:
            continue
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for run in _finite_runs(ys):
            if len(run) == 1:  # a one-epoch run has no line to draw
                (e, v), = run
                out.append(f'<circle cx="{px(e):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
                continue
            points = " ".join(f"{px(e):.1f},{py(v):.1f}" for e, v in run)
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 20}" y1="12" y2="12" stroke="{colour}" '
                   f'stroke-width="2"{dash_attr}/><text x="{legend_x + 24}" y="16">{label}</text>')
        legend_x += 80
    out.append("</g>")
    return "\n".join(out)


def _ticks(lo: float, hi: float) -> list[float]:
    """Round-numbered axis ticks (steps of 1, 2, 2.5 or 5 times a power of ten) inside [lo, hi]."""
    raw = (hi - lo) / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _finite_runs(ys: list[float]) -> list[list[tuple[int, float]]]:
    """Consecutive finite points (epoch, value); a NaN epoch splits the line."""
    runs: list[list[tuple[int, float]]] = [[]]
    for epoch, v in enumerate(ys, start=1):
        if _finite(v):
            runs[-1].append((epoch, float(v)))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


# ---------------------------------------------------------------------------- markdown helpers


def _table(header: tuple[str, str], rows: Any) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return lines


def _cell(v: Any) -> str:
    text = _fmt(v) if isinstance(v, float) else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt(v: float, digits: int = 6) -> str:
    return f"{v:.{digits}g}" if isinstance(v, (int, float)) else str(v)
