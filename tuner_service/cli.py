"""``tuner-service``: submit studies, run workers, query results.

Every heavy import (Optuna, Keras/TensorFlow) happens inside the command that needs it, so
``--help`` answers at once, and the read commands (``ls``, ``status``, ``best``, ``trials``)
never import Optuna at all (:mod:`tuner_service.queries`). Every error a user can cause is
printed as one line and exits with code 2 (3 for an aborted study); ``--debug`` (or
``TUNER_SERVICE_DEBUG=1``) prints its full traceback too, including the error it replaced.
Passwords in storage URLs are masked everywhere, tracebacks included.

Tables: on a terminal, a rich table when it fits the window, else one block per row; when
stdout is a pipe or a file, plain columns aligned with spaces, never wrapped or cut, so
``trials NAME | cat`` (or ``| grep``, ``> file``) keeps every column.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from tuner_service.errors import TunerServiceError

app = typer.Typer(
    name="tuner-service",
    help="Hyperparameter search for Keras models on Optuna storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or redirected output is not wrapped at 80 columns: the reader is a file or a program.
console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, highlight=False)

DEBUG_ENV = "TUNER_SERVICE_DEBUG"
_debug = False

StorageOpt = typer.Option(None, "--storage", help="Storage URL (default $TUNER_SERVICE_STORAGE or sqlite:///tuner.db).")


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = typer.Option(Format.table, "--format", "-f", help="Output format.")


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV, show_envvar=False,
                               help=f"Print the full traceback of an error, not only its line (also ${DEBUG_ENV}=1)."),
) -> None:
    global _debug
    _debug = debug


def _debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _fail(exc: BaseException) -> None:
    from rich.markup import escape

    from tuner_service.storage import mask_password

    if _debugging():
        print_traceback(exc)
    # The message is text, not markup: "pip install 'tuner-service[ray]'" must keep its [ray].
    err_console.print(f"[bold red]error:[/] {escape(mask_password(str(exc)))}", markup=True, soft_wrap=True)
    raise typer.Exit(getattr(exc, "exit_code", 2))


def print_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` and of every error it replaced, passwords masked.

    Our one-line errors are often raised ``from None`` to keep the normal output short; here
    the error they replaced (the model's, the database driver's) is what the user asked for.
    """
    import traceback

    from tuner_service.storage import mask_password

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__
    sys.stderr.write(mask_password("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
    sys.stderr.flush()


def _guard(fn: Any) -> Any:
    """Turn our errors into one line + exit code; leave real bugs their traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunerServiceError as exc:
            _fail(exc)

    return wrapper


# ---------------------------------------------------------------------------- submit


@app.command()
@_guard
def submit(
    study_file: Path = typer.Argument(..., help="YAML study file (see studies/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name (overrides name:)."),
    tuner: Optional[str] = typer.Option(None, "--tuner", help="random | tpe | hyperband | bayesian | grid."),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", help="Trial budget."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Most epochs one trial trains."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per trial (fit.epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    tensorboard: Optional[str] = typer.Option(None, "--tensorboard", help="Per-trial TensorBoard logs (HParams) in DIR."),
    set_: list[str] = typer.Option([], "--set", help="Override any spec field: --set fit.batch_size=64."),
    storage: Optional[str] = StorageOpt,
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Local worker processes (default 1)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Only register the study; run workers separately."),
    resume: bool = typer.Option(False, "--resume", help="Continue an existing study of this name."),
    replace: bool = typer.Option(False, "--replace", help="Delete an existing study of this name first."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="auto|ADDRESS",
        help="Run the study on this Ray cluster (runner actors) instead of local workers; needs tuner-service[ray]."),
    trials_per_gpu: int = typer.Option(1, "--trials-per-gpu", min=1, help="With --ray: actors per GPU (num_gpus=1/K)."),
    cpus_per_trial: Optional[float] = typer.Option(
        None, "--cpus-per-trial", help="With --ray: CPUs per actor (CPU slots; default 1)."),
) -> None:
    """Validate a study file, register the study and run it with local workers (or on a Ray cluster)."""
    from tuner_service import service
    from tuner_service.spec import FLAG_FIELDS, load_spec, parse_set_option

    flags = {"name": name, "tuner": tuner, "max_trials": max_trials, "max_epochs": max_epochs,
             "epochs": epochs, "batch_size": batch_size, "seed": seed, "timeout": timeout,
             "tensorboard": tensorboard}
    overrides = {FLAG_FIELDS[k]: v for k, v in flags.items()}
    overrides.update(dict(parse_set_option(s) for s in set_))
    if resume and replace:
        raise typer.BadParameter("--resume and --replace exclude each other; pick one")
    if ray is None and (trials_per_gpu != 1 or cpus_per_trial is not None):
        raise typer.BadParameter("--trials-per-gpu and --cpus-per-trial are for --ray; local workers use --workers N")
    if ray is not None and (workers is not None or no_wait):
        raise typer.BadParameter(f"--ray runs the study on the cluster; drop {'--no-wait' if no_wait else '--workers'} "
                                 "(the actors follow the cluster's resources)")
    spec = load_spec(study_file, overrides)
    if ray is None:
        service.submit(spec, storage, workers=workers or 1, wait=not no_wait, resume=resume, replace=replace,
                       console=console)
        return
    from tuner_service import ray_executor
    from tuner_service.storage import mask_password, resolve_url

    ray_executor.import_ray()  # before the study is registered: one line if Ray is missing
    url = resolve_url(storage)
    study = service.submit(spec, url, wait=False, resume=resume, replace=replace, console=None)
    console.print(f"study [bold]{spec.name}[/] registered in {mask_password(url)}: running it on the Ray cluster ({ray})")
    ray_executor.run_study(study, spec, url, ray, trials_per_gpu=trials_per_gpu, cpus_per_trial=cpus_per_trial,
                           console=console)


@app.command()
@_guard
def worker(
    study: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = StorageOpt,
    threads: Optional[int] = typer.Option(None, "--threads", help="TensorFlow threads for this worker."),
) -> None:
    """Run trials of a registered study until its budget is spent (any machine can run one)."""
    from tuner_service.worker import Worker, WorkerOptions

    w = Worker(study, storage, WorkerOptions(threads=threads))
    w.install_signal_handlers()
    n = w.run(on_trial_done=lambda state: console.print(f"trial finished: {state}"))
    console.print(f"worker done: ran {n} trial(s) of {study!r}")


# ---------------------------------------------------------------------------- queries


def _emit(rows: list[dict[str, Any]], fmt: Format, columns: list[str] | None = None) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    columns = columns or (list(rows[0]) if rows else [])
    if fmt is Format.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        sys.stdout.write(buf.getvalue())
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if not console.is_terminal:
        sys.stdout.write(plain_table(columns, cells))
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    if sum(widths) + 3 * len(columns) + 1 > console.width:  # rich's box: a border and 2 spaces of padding per column
        sys.stdout.write(record_blocks(columns, cells))  # too wide for the window: one block per row
        return
    from rich.table import Table

    table = Table()
    for c in columns:
        table.add_column(c, no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console.print(table)


def plain_table(columns: list[str], cells: list[list[str]]) -> str:
    """Columns aligned with spaces, as wide as their widest cell; an empty cell reads ``-``."""
    rows = [[c or "-" for c in row] for row in cells]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(columns)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [columns, *rows]]
    return "\n".join(lines) + "\n"


def record_blocks(columns: list[str], cells: list[list[str]]) -> str:
    width = max((len(c) for c in columns), default=0)
    out = []
    for i, row in enumerate(cells, start=1):
        out.append(f"-[ {i} ]" + "-" * max(0, width - 4))
        out += [f"{c.ljust(width)}  {v}".rstrip() for c, v in zip(columns, row)]
    return "\n".join(out) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return " ".join(str(v).split())  # one line per row, whatever the value holds


@app.command("ls")
@_guard
def ls(storage: Optional[str] = StorageOpt, format: Format = FormatOpt) -> None:
    """List the studies in the storage."""
    from tuner_service import queries

    _emit(queries.list_studies(storage), format,
          ["name", "tuner", "direction", "complete", "pruned", "failed", "running", "waiting", "best_value"])


@app.command()
@_guard
def status(study: str, storage: Optional[str] = StorageOpt, format: Format = FormatOpt) -> None:
    """Progress, best trial and retrained model of one study."""
    from tuner_service import queries

    info = queries.status(study, storage)
    if format is not Format.table:
        _emit([info], format)
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        sys.stdout.write(f"{k + ':':<{width + 1}} {_cell(v)}".rstrip() + "\n")


@app.command()
@_guard
def best(study: str, storage: Optional[str] = StorageOpt, format: Format = FormatOpt) -> None:
    """The best trial: value, parameters, trial number, best epoch."""
    from tuner_service import queries

    row = queries.best(study, storage)
    if format is Format.json:
        sys.stdout.write(json.dumps(row, indent=2, default=str) + "\n")
        return
    if "front" in row:  # several objectives: the Pareto front, one row per trial
        names, params = row["objectives"], sorted({p for t in row["front"] for p in t["params"]})
        rows = [{"number": t["number"], **t["values"], **{f"param_{p}": t["params"].get(p) for p in params}}
                for t in row["front"]]
        if format is Format.table:
            sys.stdout.write(f"Pareto front of {study!r}: {len(rows)} trial(s), "
                             + ", ".join(f"{n} ({d})" for n, d in zip(names, row["directions"])) + "\n")
        _emit(rows, format, ["number", *names, *[f"param_{p}" for p in params]])
        return
    if format is Format.csv:
        _emit([{**{k: v for k, v in row.items() if k != "params"}, **row["params"]}], format)
        return
    sys.stdout.write(f"best trial #{row['number']} of {study!r}: {row['objective']} = {row['value']:.6g}"
                     + (f" (epoch {row['best_epoch']})" if row.get("best_epoch") else "") + "\n")
    _emit([{"parameter": k, "value": v} for k, v in row["params"].items()], Format.table)


@app.command()
@_guard
def trials(
    study: str,
    storage: Optional[str] = StorageOpt,
    top: Optional[int] = typer.Option(None, "--top", help="Only the K best completed trials."),
    format: Format = FormatOpt,
) -> None:
    """Every trial of a study (or the --top K best)."""
    from tuner_service import queries

    if format is Format.csv and top is None:
        grid_rows = queries.cv_results(study, storage)
        if grid_rows is not None:  # a grid study exports GridSearchCV's cv_results_ table
            _emit([{k: v for k, v in r.items() if k != "params"} for r in grid_rows], format)
            return
    rows = queries.trials(study, storage, top=top)
    params = sorted({p for r in rows for p in r["params"]})
    flat = [{**{k: v for k, v in r.items() if k != "params"}, **{f"param_{p}": r["params"].get(p) for p in params}}
            for r in rows]
    if format is Format.json:
        _emit(rows, format)
    else:
        several = any("values" in r for r in rows)  # several objectives: every value, not just the first
        cols = (["number", "state", "values" if several else "value"]
                + (["feasible"] if any("feasible" in r for r in rows) else [])
                + ["best_epoch", "duration_s"] + [f"param_{p}" for p in params])
        if format is Format.csv:
            cols += ["epochs_run", "param_count", "host", "pid", "fail_reason"]
        elif any(r["fail_reason"] for r in rows):
            cols.append("fail_reason")
        _emit(flat, format, cols)


# ---------------------------------------------------------------------------- after the search


@app.command()
@_guard
def retrain(
    study: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = StorageOpt,
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number (default: the best trial)."),
    prefer: Optional[str] = typer.Option(None, "--prefer", help="Several objectives: the Pareto front's best "
                                                                "trial in this one (e.g. val_accuracy)."),
    epochs: str = typer.Option("auto", "--epochs", help="'auto' (the trial's best epoch) or a number."),
    output: Path = typer.Option(Path("models"), "--output", help="Directory for model.keras and metrics.json."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Train K seeds; report mean and spread."),
    on_agent: bool = typer.Option(False, "--on-agent", help="Run in a worker/agent slot instead of here."),
) -> None:
    """Train the best configuration on train + validation, evaluate on test, keep the model."""
    from tuner_service.retrain import retrain_cli

    retrain_cli(study, storage, trial=trial, prefer=prefer, epochs=epochs, output=output, seeds=seeds,
                on_agent=on_agent, console=console)


@app.command()
@_guard
def dashboard(
    storage: Optional[str] = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Bind address; other than loopback it needs a login (or --allow-unauthenticated)."),
    port: int = typer.Option(8080, "--port"),
    artifacts: Optional[Path] = typer.Option(
        None, "--artifacts",
        help="Artifact directory (default $TUNER_SERVICE_ARTIFACTS, else DB-FILE-artifacts beside a SQLite file)."),
    password_file: Optional[Path] = typer.Option(
        None, "--password-file",
        help="Require a login: user --user, this file's password (or $TUNER_SERVICE_DASHBOARD_PASSWORD[_FILE])."),
    user: Optional[str] = typer.Option(None, "--user", help="Login user name (default $TUNER_SERVICE_DASHBOARD_USER or tuner)."),
    read_only: Optional[bool] = typer.Option(
        None, "--read-only/--read-write", show_default=False,
        help="Refuse every write (notes, renames, deletions, trial updates) with 403 ($TUNER_SERVICE_DASHBOARD_READ_ONLY)."),
    allow_unauthenticated: bool = typer.Option(
        False, "--allow-unauthenticated",
        help="Serve beyond loopback without a login (only behind a proxy or firewall that guards the port)."),
) -> None:
    """Open optuna-dashboard on the service's storage."""
    from tuner_service.dashboard import ALLOW_UNAUTHENTICATED_ENV, Access, env_flag, serve

    access = Access.from_env(password_file=password_file, user=user, read_only=read_only)
    serve(storage, host=host, port=port, artifacts=artifacts, access=access,
          allow_unauthenticated=allow_unauthenticated or env_flag(ALLOW_UNAUTHENTICATED_ENV), console=console)


@app.command()
@_guard
def report(
    study: str = typer.Argument(..., help="Study name."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o"),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write a self-contained HTML report (plots embedded, opens offline)."""
    from tuner_service.report import write_report

    path = write_report(study, storage, output)
    console.print(f"report written to {path}")


@app.command("pause")
@_guard
def pause_cmd(study: str = typer.Argument(..., help="Study name."), storage: Optional[str] = StorageOpt) -> None:
    """Start no new trial of STUDY until `resume` (running trials finish)."""
    from tuner_service import service

    r = service.pause(study, storage)
    console.print(f"study {study!r} paused: no trial starts until `tuner-service resume {study}` "
                  f"({r['running_trials']} running trial(s) finish)")


@app.command("stop")
@_guard
def stop_cmd(study: str = typer.Argument(..., help="Study name."), storage: Optional[str] = StorageOpt) -> None:
    """Start no new trial of STUDY (running trials finish; workers exit); `resume` undoes it."""
    from tuner_service import service

    r = service.stop(study, storage)
    console.print(f"study {study!r} stopped: {r['running_trials']} running trial(s) finish, {r['not_started']} not "
                  f"started stay in its budget (`tuner-service resume {study}` continues it)")


@app.command("resume")
@_guard
def resume_cmd(study: str = typer.Argument(..., help="Study name."), storage: Optional[str] = StorageOpt) -> None:
    """Undo `pause` or `stop`: workers and agents pick STUDY up again."""
    from tuner_service import service

    r = service.resume_study(study, storage)
    console.print(f"study {study!r} resumed (was {r['was']}): {r['not_started']} trial(s) to run")


@app.command("delete")
@_guard
def delete_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = StorageOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Delete even while trials run."),
) -> None:
    """Delete STUDY with its trials and notes (asks first; --yes does not)."""
    from tuner_service import queries, service

    info = queries.status(study, storage)
    if not yes:
        shown = f"{info['complete']} complete, {info['failed']} failed, {info['running']} running"
        if not sys.stdin.isatty():
            raise typer.BadParameter(f"deleting {study!r} ({shown}) needs confirmation; pass --yes")
        typer.confirm(f"delete study {study!r} ({shown})?", abort=True)
    r = service.delete(study, storage, force=force)
    console.print(f"study {study!r} deleted ({r['deleted_trials']} trial(s))")


@app.command()
@_guard
def agent(
    storage: Optional[str] = StorageOpt,
    gpus: str = typer.Option("all", "--gpus", help="'all', 'none' or a list like 0,1."),
    trials_per_gpu: int = typer.Option(1, "--trials-per-gpu", min=1, help="Runner slots per GPU."),
    slots: Optional[int] = typer.Option(None, "--slots", min=1, help="CPU slots with --gpus none (default: 1)."),
    studies: list[str] = typer.Option([], "--studies", help="Only these studies (repeat the flag)."),
    max_trials_per_runner: int = typer.Option(50, "--recycle-after", min=1, help="Restart a runner after N trials."),
    memory_limit_mb: Optional[int] = typer.Option(None, "--runner-memory-mb", help="Restart a runner above this RSS."),
    once: bool = typer.Option(False, "--once", help="Exit when no study has budget left (default: keep waiting)."),
    standby: bool = typer.Option(True, "--standby/--no-standby",
                                 help="Keep one runner per slot started in advance (Keras imported), so a study "
                                      "switch or a recycled runner starts its next trial without the import."),
    drain: bool = typer.Option(False, "--drain", help="Ask the running agents on this machine to finish their "
                                                      "trials, take no new ones and exit (or send them SIGUSR1)."),
    drain_all: bool = typer.Option(False, "--drain-all", help="The same for the agents on every machine."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="auto|ADDRESS",
        help="Keep runner actors busy on this Ray cluster instead of this machine's slots (auto: the local "
             "cluster or $RAY_ADDRESS); needs tuner-service[ray]."),
    cpus_per_trial: Optional[float] = typer.Option(
        None, "--cpus-per-trial", help="With --ray: CPUs per actor (CPU slots; default 1; GPU slots: 0 allowed)."),
) -> None:
    """Keep this machine's GPUs (or a Ray cluster's) busy with trials from every study that has budget left."""
    if drain or drain_all:
        import socket

        from tuner_service import registry
        from tuner_service.storage import open_storage

        asked = registry.request_drain(open_storage(storage, create=False),
                                       None if drain_all else socket.gethostname())
        for a in asked:
            console.print(f"draining agent pid {a['pid']} on {a['host']} ({a['slots']} slot(s), "
                          f"studies: {', '.join(a['studies']) or 'none'})")
        if not asked:
            console.print("no running agent" + ("" if drain_all else " on this machine"))
        return
    if ray is None:
        from tuner_service.agent import run_agent

        if cpus_per_trial is not None:
            raise typer.BadParameter("--cpus-per-trial is for --ray; this machine's CPU slots: --gpus none --slots N")
        run_agent(storage, gpus=gpus, trials_per_gpu=trials_per_gpu, slots=slots, studies=studies,
                  max_trials_per_runner=max_trials_per_runner, memory_limit_mb=memory_limit_mb, once=once,
                  console=console, standby=standby)
        return
    from tuner_service.ray_executor import run_ray_agent

    if slots is not None:
        raise typer.BadParameter("--slots is for this machine's agent; with --ray the actors follow the cluster's "
                                 "free resources (--cpus-per-trial sets each CPU actor's size)")
    run_ray_agent(storage, ray, gpus=gpus, trials_per_gpu=trials_per_gpu, cpus_per_trial=cpus_per_trial,
                  studies=studies, max_trials_per_runner=max_trials_per_runner, memory_limit_mb=memory_limit_mb,
                  once=once, console=console)


#: Commands that answer from plain SQL, without importing Optuna (tuner_service/queries.py).
_READ_COMMANDS = {"ls", "status", "best", "trials", "--help", "-h"}


def main() -> None:
    try:
        from typer._click import exceptions as click_exc  # typer >= 0.20 vendors click
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import exceptions as click_exc

    from tuner_service.runners._env import process_defaults, quiet_optuna

    process_defaults()  # the CLI's own process (submit runs a worker in it): TensorFlow's settings
    if len(sys.argv) > 1 and sys.argv[1] not in _READ_COMMANDS:  # the read commands never import Optuna
        quiet_optuna()
    try:
        code = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        app(["--help"], standalone_mode=False)
        code = 0
    except click_exc.UsageError as exc:  # a bad flag value, an unknown option, a missing argument
        where = exc.ctx.command_path if exc.ctx is not None else "tuner-service"
        err_console.print(f"[bold red]error:[/] {exc.format_message()} (see `{where} --help`)", soft_wrap=True)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C (typer's vendored click has no exceptions.Abort)
        code = 130
    except Exception as exc:  # a bug: its traceback, with any password in it masked
        print_traceback(exc)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
