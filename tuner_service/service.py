"""The Python API behind the CLI: submit a study, run local workers, query results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service import study as study_mod
from tuner_service.errors import BadInput, StudyAborted, WorkersFailed
from tuner_service.storage import check_url, mask_password, open_storage, resolve_url, sqlite_path

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from tuner_service.spec import StudySpec


def submit(
    spec: StudySpec,
    storage_url: str | None = None,
    *,
    workers: int = 1,
    wait: bool = True,
    resume: bool = False,
    replace: bool = False,
    console: Console | None = None,
) -> optuna.Study:
    """Register ``spec`` (after checking everything that can be checked) and run it."""


    url = resolve_url(storage_url)
    check_url(url)  # before the (slow) model check
    existing = _existing_study(url, spec.name)
    if existing is not None and not (resume or replace):
        raise BadInput(
            f"study {spec.name!r} already exists in {mask_password(url)}; continue it with --resume, "
            "start it afresh with --replace, or choose another --name"
        )
    if resume and existing is None:
        raise BadInput(f"--resume: there is no study {spec.name!r} in {mask_password(url)}; drop --resume to create it")

    runner = None
    extra: dict[str, Any] = {}
    points = None
    first: list[dict[str, Any]] = []
    # Worker processes start now and import TensorFlow, the user's code and the data while the
    # model check below runs; they claim trials once this submission's study is registered
    # (they recognise it by a token, not by its name: --replace deletes an older one meanwhile).
    token = uuid.uuid4().hex
    procs = start_workers(spec, url, workers, warm=token) if wait and workers > 1 and not resume else []
    try:
        if not resume:
            # Everything that can fail on user input fails here, before the database is touched.
            runner, extra, points = _preflight(spec)
            if spec.enqueue or spec.warm_start is not None:
                from tuner_service.warm_start import initial_points

                first, warned = initial_points(spec, url, extra.get("hyperparameters"))
                for line in warned:
                    _say(console, f"[yellow]warning:[/] {line}")
            extra.pop("hyperparameters", None)
            extra[A.SUBMISSION] = token
        study = _register(spec, url, existing, resume=resume, replace=replace, extra=extra, points=points,
                          first=first, console=console)
    except BaseException:
        _stop_children(procs)
        raise
    if not wait:
        _say(console, f"run it with: tuner-service worker {spec.name} --storage {mask_password(url)}")
        return study
    run_local(study, spec, url, workers=workers, runner=runner, console=console, procs=procs)
    return study


def _register(spec: StudySpec, url: str, existing: Any, *, resume: bool, replace: bool, extra: dict[str, Any],
              points: list[dict[str, Any]] | None, first: list[dict[str, Any]], console: Console | None) -> optuna.Study:
    """Create (or resume, or replace) the study in the storage."""
    from tuner_service import tuners

    storage = open_storage(url)
    if replace and existing is not None:
        study_mod.delete(storage, spec.name)
    if resume:
        study = study_mod.load(storage, spec.name)
        added = study_mod.resume(study, spec)
        _say(console, f"resuming study {spec.name!r}" + (f" with {added} more trial slot(s)" if added else ""))
    else:
        study = study_mod.create(spec, storage, extra_attrs=extra, points=points, first=first)
        from tuner_service.notes import write_study_note

        write_study_note(study)
        _say(console, f"study [bold]{spec.name}[/] registered in {mask_password(url)}: "
                      f"tuner {spec.tuner.name}, {tuners.planned_trials(spec) if points is None else len(points)} trials"
                      + (f", the first {len(first)} of them known configurations" if first else ""))
    return study


def _existing_study(url: str, name: str) -> Any:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    storage = open_storage(url)
    return storage if study_mod.study_exists(storage, name) else None


def _preflight(spec: StudySpec) -> tuple[Any, dict[str, Any], list[dict[str, Any]] | None]:
    from tuner_service import tuners

    tuner = tuners.get(spec.tuner.name)
    if tuner.prepare is not None:  # e.g. grid: validates the grid against the estimator, returns the points
        import importlib

        module, _, attr = tuner.prepare.partition(":")
        return getattr(importlib.import_module(module), attr)(spec)
    from tuner_service.runners import make_runner
    from tuner_service.runners._env import apply_speed

    apply_speed(spec.speed)
    runner = make_runner(spec)
    checked = runner.preflight()
    d = runner.data
    extra = {"data": {"source": spec.data.source, "hash": d.hash, "task": d.task, **d.sizes},
             "hyperparameters": checked.get("hyperparameters")}
    return runner, extra, None


def run_local(
    study: optuna.Study,
    spec: StudySpec,
    url: str,
    *,
    workers: int = 1,
    runner: Any = None,
    console: Console | None = None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> study_mod.Counts:
    """Run the study here with ``workers`` processes (``procs``: already started) and a live
    progress bar."""
    from tuner_service.worker import Worker, WorkerOptions

    threads = max(1, (os.cpu_count() or 1) // workers)
    stop = threading.Event()
    progress = threading.Thread(target=_follow, args=(study, spec, stop, console), daemon=True)
    progress.start()
    procs = list(procs or [])
    try:
        if workers == 1 and not procs:
            w = Worker(spec.name, url, WorkerOptions(index=0, threads=threads), runner=runner)
            previous = w.install_signal_handlers()
            try:
                w.run()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        else:
            procs = procs or start_workers(spec, url, workers)
            _wait_children(procs)
    finally:
        stop.set()
        progress.join()
    counts = _counts_at_end(study, spec)
    crashed = [p.returncode for p in procs if p.returncode not in (0, None, -signal.SIGINT, -signal.SIGTERM, 130)]
    if crashed and not counts.done:
        raise WorkersFailed(f"worker processes exited with codes {crashed} and {counts.remaining + counts.waiting} "
                            f"trial(s) not run; see their output above, then continue with --resume")
    _report_best(study, spec, url, counts, console)
    return counts


def _counts_at_end(study: optuna.Study, spec: StudySpec) -> study_mod.Counts:
    """The study's counts once its drivers have returned; ``StudyAborted`` (with the reason)
    when it was stopped short."""
    counts = study_mod.Counts.for_study(study)
    aborted = study.user_attrs.get(A.ABORTED) if not counts.done else None
    if aborted:
        raise StudyAborted(f"study {spec.name!r} stopped: {aborted}")
    return counts


def start_workers(spec: StudySpec, url: str, workers: int, *, warm: str | None = None) -> list[subprocess.Popen[bytes]]:
    """``workers`` worker processes on study ``spec.name``. ``warm`` (a submission token):
    started before the study exists, they build their runner from ``spec`` (TensorFlow, the
    model's code, the data), then wait for the study registered with that token."""
    import json

    threads = max(1, (os.cpu_count() or 1) // workers)
    # The storage URL travels in the environment: a password in argv is visible in `ps`.
    env = {**os.environ, "TUNER_SERVICE_STORAGE": url}
    extra = []
    if warm:
        env["TUNER_SERVICE_SPEC"] = json.dumps(spec.to_stored())
        env["TUNER_SERVICE_SUBMISSION"] = warm
        extra = ["--warm"]
    return [subprocess.Popen([sys.executable, "-m", "tuner_service.worker", spec.name, "--index", str(i),
                              "--threads", str(threads), *extra], env=env) for i in range(workers)]


def _stop_children(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_children(procs: list[subprocess.Popen[bytes]]) -> None:
    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            while p.poll() is None:
                try:
                    p.wait()
                except KeyboardInterrupt:
                    forward(signal.SIGINT, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _follow(study: optuna.Study, spec: StudySpec, stop: threading.Event, console: Console | None) -> None:
    """A live progress bar fed by polling the storage (so it counts every worker's trials)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        console=console, transient=False, disable=console is None,
    ) as bar:
        task = bar.add_task(spec.name, total=None, info="starting workers")
        while True:
            try:
                c = study_mod.Counts.for_study(study)
            except Exception:  # a transient storage error must not kill the progress bar
                c = None
            if c is not None:
                best = (f"best {spec.objective.name} {c.best.value:.4f} (#{c.best.number})"
                        if c.best is not None else "no result yet")
                extra = f", {c.pruned} pruned" if c.pruned else ""
                extra += f", {c.failed} failed" if c.failed else ""
                bar.update(task, total=c.total, completed=c.finished,
                           info=f"{best} | running {c.running}{extra}")
            if stop.wait(1.0):
                break


def _report_best(study: optuna.Study, spec: StudySpec, url: str, counts: study_mod.Counts, console: Console | None) -> None:
    if console is None:
        return
    summary = (f"{counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed"
               + (f", {counts.waiting + counts.remaining} not started (resume with --resume)"
                  if counts.waiting + counts.remaining else ""))
    console.print(f"study [bold]{spec.name}[/]: {summary}")
    try:
        row = best(spec.name, url, study=study)
    except BadInput as exc:
        console.print(str(exc))
        return
    if "front" in row:
        console.print(f"Pareto front: {len(row['front'])} trial(s) (" + ", ".join(
            f"{n} {d}" for n, d in zip(row["objectives"], row["directions"])) + ")")
        for t in row["front"]:
            console.print(f"  trial #{t['number']}: " + ", ".join(f"{k} = {v:.6g}" for k, v in t["values"].items()))
        console.print(f"retrain one: tuner-service retrain {spec.name} --trial N  (or --prefer {row['objectives'][0]})")
    else:
        console.print(f"best trial #{row['number']}: {spec.objective.name} = {row['value']:.4f}"
                      + (f" at epoch {row['best_epoch']}" if row.get("best_epoch") else ""))
        for k, v in row["params"].items():
            console.print(f"  {k}: {v}")
    masked = mask_password(url)
    console.print(f"query:      tuner-service best {spec.name} --storage {masked}")
    console.print(f"dashboard:  tuner-service dashboard --storage {masked}   (then open http://127.0.0.1:8080)")


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text)


# ---------------------------------------------------------------------------- control


def pause(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """No trial of ``name`` starts until :func:`resume` (running ones finish); workers wait,
    agents give their slots to other studies."""
    return _control(name, storage_url, study_mod.PAUSED)


def stop(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """No trial of ``name`` starts again (running ones finish); workers exit. :func:`resume`
    undoes it."""
    return _control(name, storage_url, study_mod.STOPPED)


def resume_study(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """Undo :func:`pause` or :func:`stop`: workers and agents pick the study up again."""
    return _control(name, storage_url, None)


def _control(name: str, storage_url: str | None, state: str | None) -> dict[str, Any]:
    study = study_mod.load(open_storage(storage_url, create=False), name)
    was = study_mod.control_state(study.user_attrs)
    study_mod.set_control(study, state)
    counts = study_mod.Counts.for_study(study)
    return {"study": name, "was": was or "running", "now": state or "running", "running_trials": counts.running,
            "not_started": counts.waiting + counts.remaining}


def delete(name: str, storage_url: str | None = None, *, force: bool = False) -> dict[str, Any]:
    """Delete a study, its trials and its budget counter (refused while trials run, unless ``force``)."""
    storage = open_storage(storage_url, create=False)
    study = study_mod.load(storage, name)
    counts = study_mod.Counts.for_study(study)
    if counts.running and not force:
        raise BadInput(f"study {name!r} has {counts.running} running trial(s); stop it first "
                       f"(tuner-service stop {name}) and wait for them, or pass --force")
    study_mod.delete(storage, name)
    return {"study": name, "deleted_trials": counts.total - counts.remaining}


# ---------------------------------------------------------------------------- queries

# The read side (plain SQL on Optuna's tables, no Optuna import) lives in tuner_service.queries;
# re-exported so ``service.best(...)`` and ``tuner_service.best(...)`` keep working.
from tuner_service.queries import best, cv_results, list_studies, status, trials  # noqa: E402

__all__ = ["best", "cv_results", "delete", "list_studies", "pause", "resume_study", "run_local", "status", "stop",
           "submit", "trials"]
