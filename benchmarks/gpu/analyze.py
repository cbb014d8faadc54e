"""Summarise one agent run of the GPU benchmark: its trials (from the storage) and the
``nvidia-smi`` samples taken while it ran (``monitor.py``).

Prints one JSON object (and appends it to ``--summary``) with: trials by state, the runner pids,
slots, ``CUDA_VISIBLE_DEVICES`` and Keras devices the trials recorded, the most trials running at
once (from their start/finish times), trials per minute (over the span from the first trial's
start to the last one's finish, and over the agent's wall time), the most runner processes seen
on the GPU in one ``nvidia-smi`` sample, each runner's peak GPU memory, GPU utilisation and CPU use.
The trials themselves go to ``--trials-out`` (JSON lines).

Run: ``python3 benchmarks/gpu/analyze.py --storage URL --study NAME --phase k2 --k 2 --smi smi.csv
--wall 61.2 --summary summary.jsonl --trials-out trials.jsonl``
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from typing import Any


def trial_rows(storage: str, study: str) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False):
        a = t.user_attrs
        start = a.get("started_at_unix") or (t.datetime_start.timestamp() if t.datetime_start else None)
        end = a.get("finished_at_unix") or (t.datetime_complete.timestamp() if t.datetime_complete else None)
        rows.append({"study": study, "number": t.number, "state": t.state.name, "value": t.value,
                     "params": t.params, "pid": a.get("pid"), "slot": a.get("slot"),
                     "cuda_visible_devices": a.get("cuda_visible_devices"), "device": a.get("device"),
                     "keras_backend": a.get("keras_backend"), "start": start, "end": end,
                     "fit_seconds": a.get("fit_seconds"), "trial_seconds": a.get("trial_seconds"),
                     "fail_reason": a.get("fail_reason")})
    return rows


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def smi_summary(path: str, phase: str, runner_pids: set[str]) -> dict[str, Any]:
    apps: dict[str, list[tuple[str, float]]] = defaultdict(list)  # time -> [(pid, MiB)]
    util: list[float] = []
    gpu_mem: list[float] = []
    envs: dict[str, str] = {}
    cpu: list[float] = []
    load: list[float] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 6 or row[0] != phase:
                continue
            _, t, kind, pid, a, b = row[:6]
            if kind == "app":
                apps[t].append((pid, float(a)))
            elif kind == "gpu":
                util.append(float(a))
                gpu_mem.append(float(b))
            elif kind == "env":
                envs[pid] = b
            elif kind == "cpu":
                cpu.append(float(a))
                load.append(float(b or 0))
    peak: dict[str, float] = defaultdict(float)
    most_runners = most_procs = 0
    most_total = 0.0
    for samples in apps.values():
        runners = [(p, m) for p, m in samples if p in runner_pids]
        most_runners = max(most_runners, len({p for p, _ in runners}))
        most_procs = max(most_procs, len({p for p, _ in samples}))
        most_total = max(most_total, sum(m for _, m in runners))
        for p, m in samples:
            peak[p] = max(peak[p], m)
    runner_peaks = {p: m for p, m in peak.items() if p in runner_pids}
    return {
        "smi_samples": len(util),
        "most_runner_pids_in_one_sample": most_runners,
        "most_gpu_processes_in_one_sample": most_procs,
        "peak_mib_per_runner": runner_peaks,
        "other_gpu_pids_peak_mib": {p: m for p, m in peak.items() if p not in runner_pids},
        "max_peak_mib_one_runner": max(runner_peaks.values(), default=0.0),
        "max_sum_mib_runners": most_total,
        "gpu_util_mean_pct": round(statistics.fmean(util), 1) if util else None,
        "gpu_util_max_pct": max(util, default=None),
        "gpu_mem_used_max_mib": max(gpu_mem, default=None),
        "gpu_util_samples_busy_frac": round(sum(u > 0 for u in util) / len(util), 2) if util else None,
        "cpu_busy_mean_pct": round(statistics.fmean(cpu), 1) if cpu else None,
        "cpu_busy_max_pct": max(cpu, default=None),
        "loadavg_max": max(load, default=None),
        "runner_env": {p: e for p, e in envs.items() if p in runner_pids},
        "other_env": {p: e for p, e in envs.items() if p not in runner_pids},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--k", type=int, default=0)
    p.add_argument("--smi")
    p.add_argument("--wall", type=float)
    p.add_argument("--summary")
    p.add_argument("--trials-out")
    args = p.parse_args()
    rows = trial_rows(args.storage, args.study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    spans = [(r["start"], r["end"]) for r in rows if r["start"] and r["end"]]
    first, last = (min(s for s, _ in spans), max(e for _, e in spans)) if spans else (0.0, 0.0)
    pids = {str(r["pid"]) for r in rows if r["pid"] is not None}
    out: dict[str, Any] = {
        "phase": args.phase, "k": args.k, "study": args.study,
        "states": {s: sum(1 for r in rows if r["state"] == s) for s in sorted({r["state"] for r in rows})},
        "runner_pids": sorted(pids),
        "slots": sorted({r["slot"] for r in rows if r["slot"]}),
        "cuda_visible_devices": sorted({str(r["cuda_visible_devices"]) for r in rows}),
        "devices": sorted({str(r["device"]) for r in rows}),
        "keras_backends": sorted({str(r["keras_backend"]) for r in rows}),
        "max_trials_running_at_once": max_overlap(spans),
        "trial_span_s": round(last - first, 2),
        "trials_per_min_span": round(len(done) / (last - first) * 60, 2) if last > first else None,
        "agent_wall_s": args.wall,
        "trials_per_min_wall": round(len(done) / args.wall * 60, 2) if args.wall else None,
        "median_trial_s": statistics.median([r["trial_seconds"] for r in done if r["trial_seconds"]] or [0]),
        "median_fit_s": statistics.median([r["fit_seconds"] for r in done if r["fit_seconds"]] or [0]),
        "best_value": max((r["value"] for r in done if r["value"] is not None), default=None),
        "fail_reasons": sorted({r["fail_reason"] for r in rows if r["fail_reason"]}),
    }
    if args.smi:
        out.update(smi_summary(args.smi, args.phase, pids))
    if args.trials_out:
        with open(args.trials_out, "a") as f:
            for r in rows:
                f.write(json.dumps({"phase": args.phase, **r}) + "\n")
    text = json.dumps(out, default=str)
    print(text)
    if args.summary:
        with open(args.summary, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
