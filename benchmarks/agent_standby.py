"""Standby runners: how long an agent's slot stands idle when its runner is replaced, with
``--standby`` (the default: one runner per slot started in advance, Keras imported) and with
``--no-standby`` (the next runner is started only when it is needed), side by side.

A slot's runner is replaced when its study has nothing claimable and another study has (a study
switch), and after ``--recycle-after`` trials (a recycle). Without a standby runner each
replacement waits for a new process to import TensorFlow.

Two scenarios, both the real CLI (``tuner-service agent --gpus none --once``) on SQLite, trials
of ``ray_models.SleepTrivial`` (a ``--sleep`` s sleep, then the trivial model's 1-epoch fit):

- switch: 1 slot, ``--studies`` studies of ``--trials`` trials each, registered before the agent
  starts (served one after the other, FIFO);
- recycle: 2 slots, one study of ``4 x --recycle-after`` trials, runners recycled after
  ``--recycle-after`` trials (default 5: a runner lives longer than an import; a standby runner
  cannot hide imports that take longer than its predecessor's whole life).

Figures, from the trials' recorded start and completion times, slot and runner pid:

- replacement gap: per slot, the time from one runner's last trial completion to the next
  runner's first trial start (median and max over every replacement of the run);
- utilisation = sum of trial durations / (slots x span from the first start to the last
  completion);
- wall: agent command start to exit.

Repeats are interleaved (standby, no standby, ...); medians are reported.

Run: ``.venv/bin/python benchmarks/agent_standby.py [--trials 3] [--studies 3] [--recycle-after 5] [--repeats 2]
[--quick]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH_DIR,
    MODELS,
    REPO,
    Target,
    create_study,
    emit,
    fmt,
    log,
    make_spec,
    median,
    parser,
    scratch_dir,
    slot_timing,
    sqlite_url,
    table,
)

MODES = (("standby", []), ("no standby", ["--no-standby"]))


def run_agent(url: str, slots: int, extra: list[str]) -> dict[str, Any]:
    """Run the agent until nothing is left; the gaps, utilisation and wall of its trials."""
    import optuna
    from optuna.trial import TrialState

    env = {**os.environ, "TUNER_SERVICE_STORAGE": url, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tuner_service", "agent", "--gpus", "none", "--slots", str(slots),
                           "--once", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"agent exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [t for s in optuna.get_all_study_summaries(url) for t in optuna.load_study(study_name=s.study_name,
                                                                                       storage=url).get_trials()
            if t.state == TrialState.COMPLETE]
    gaps = []
    for slot in {t.user_attrs["slot"] for t in done}:
        mine = sorted((t for t in done if t.user_attrs["slot"] == slot), key=lambda t: t.datetime_start)
        gaps += [(b.datetime_start - a.datetime_complete).total_seconds()
                 for a, b in zip(mine, mine[1:]) if a.user_attrs["pid"] != b.user_attrs["pid"]]
    timing = slot_timing(done, slots)
    return {"completed": len(done), "replacements": len(gaps), "gap_median_s": median(gaps) if gaps else None,
            "gap_max_s": max(gaps) if gaps else None, "utilisation": timing["utilisation"], "wall_s": wall,
            "startup_s": timing["first"] - t0}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3, help="trials per study in the switch scenario")
    p.add_argument("--recycle-after", type=int, default=5, help="trials per runner in the recycle scenario")
    p.add_argument("--studies", type=int, default=3, help="studies in the switch scenario")
    p.add_argument("--sleep", type=float, default=1.0, help="seconds each trial sleeps before its fit")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.trials, args.studies, args.repeats, args.recycle_after = 2, 2, 1, 3
    os.environ["BENCH_TRIAL_SLEEP"] = str(args.sleep)
    data = {"source": f"{MODELS}:load_trivial", "validation_split": 0.2, "test_split": 0}
    model = f"{BENCH_DIR / 'ray_models.py'}:SleepTrivial"
    scenarios = {
        "switch": (1, [], [(f"s{i}", args.trials) for i in range(args.studies)]),
        "recycle": (2, ["--recycle-after", str(args.recycle_after)], [("r", 4 * args.recycle_after)]),
    }
    runs: list[dict[str, Any]] = []
    with scratch_dir("standby") as directory:
        for rep in range(args.repeats):
            for scenario, (slots, flags, studies) in scenarios.items():
                for mode, mode_flags in MODES:
                    url = sqlite_url(directory, f"{scenario}_{mode.replace(' ', '_')}_{rep}")
                    for name, trials in studies:
                        create_study(make_spec(name, model=model, max_trials=trials, max_epochs=1, seed=rep,
                                               data=data), url)
                    log(f"agent_standby: {scenario}, {mode}, repeat {rep + 1}")
                    r = run_agent(url, slots, [*flags, *mode_flags])
                    r.update(scenario=scenario, mode=mode, repeat=rep, slots=slots)
                    log(f"  gap median {fmt(r['gap_median_s'])} s over {r['replacements']} replacement(s), "
                        f"utilisation {fmt(r['utilisation'])}, wall {fmt(r['wall_s'])} s")
                    runs.append(r)
    rows, summary, targets = [], {}, []
    for scenario, (slots, flags, studies) in scenarios.items():
        for mode, _ in MODES:
            mine = [r for r in runs if r["scenario"] == scenario and r["mode"] == mode]
            s = {k: median([r[k] for r in mine if r[k] is not None] or [float("nan")])
                 for k in ("gap_median_s", "gap_max_s", "utilisation", "wall_s", "startup_s", "replacements")}
            s["completed"] = [r["completed"] for r in mine]
            summary[f"{scenario}:{mode}"] = s
            what = (f"{len(studies)} studies x {studies[0][1]} trials, {slots} slot" if scenario == "switch"
                    else f"{studies[0][1]} trials, {slots} slots, {' '.join(flags)}")
            rows.append([scenario, what, mode, fmt(s["replacements"]), fmt(s["gap_median_s"]), fmt(s["gap_max_s"]),
                         fmt(s["utilisation"]), fmt(s["startup_s"]), fmt(s["wall_s"]),
                         " / ".join(str(c) for c in s["completed"])])
        a, b = summary[f"{scenario}:standby"], summary[f"{scenario}:no standby"]
        targets.append(Target(f"{scenario}: median replacement gap, standby / no standby (first trial within 1 s)",
                              f"{fmt(a['gap_median_s'])} s / {fmt(b['gap_median_s'])} s", "< 1 s",
                              a["gap_median_s"] < 1.0))
    md = (f"Trials of {fmt(args.sleep)} s sleep + the trivial model's fit, SQLite, {args.repeats} interleaved "
          "repeat(s), medians. Replacement gap: a slot's idle time between one runner's last trial and the next "
          "runner's first trial (a study switch or a recycle); utilisation = sum of trial durations / (slots x "
          "span); start-up = command start to first trial start (the first runners always start cold).\n\n"
          + table(["scenario", "what", "agent", "replacements", "gap s (median)", "gap s (max)", "utilisation",
                   "start-up s", "wall s", "completed"], rows))
    emit(args, "Standby runners: slot idle time at a runner replacement", md, {"runs": runs, "summary": summary},
         targets)


if __name__ == "__main__":
    main()
