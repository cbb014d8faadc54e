"""Scheduling efficiency of 1 s trials: the Ray executor (runner actors) vs the agent (runner
processes), side by side.

Why: the Ray executor must keep its slots as busy as the agent keeps its own; where it does not
(actor start-up, polling, the extra hop through Ray) is its cost.

Both executors run the real CLI with N slots on the same kind of study: ``T = trials x N``
trials of ``ray_models.SleepTrivial`` (a 1 s sleep, then the trivial model's fit: a trial is
~1 s plus Keras' per-model cost), random sampler, the same storage (PostgreSQL when it can be
started, else SQLite). The agent: ``tuner-service agent --gpus none --slots N --once``. Ray: a
local cluster (``ray.cluster_utils.Cluster``: a head without resources and one worker node with N
CPUs, started before the clock) and ``tuner-service agent --ray ADDRESS --gpus none --once``
(N actors of 1 CPU). Figures, from the trials' recorded start and completion times:

- wall: command start to exit (runner start-up included);
- span: first trial start to last completion; throughput = T / span;
- efficiency = throughput / (N x the same executor's 1-slot throughput) (as ``scaling.py``);
- utilisation = sum of trial durations / (N x span): how busy the slots were kept.

Repeats are interleaved (agent, Ray, agent, Ray...); medians are reported. The machine's 2
cores are shared by the N runners, so trials themselves slow down as N grows (both executors
alike); utilisation separates that from scheduling gaps.

Run: ``.venv/bin/python benchmarks/ray_vs_agent.py [--slots 1,2,4] [--trials 6] [--repeats 2] [--quick]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
    fresh_url,
    log,
    make_spec,
    maybe_postgres,
    median,
    parser,
    scratch_dir,
    slot_timing,
    table,
)

OBJECT_STORE = 80 * 2**20


class RayNode:
    """A local Ray cluster with one worker node of ``cpus`` CPUs (and a head without resources)."""

    def __init__(self, cpus: int) -> None:
        from ray._common.utils import get_default_ray_temp_dir
        from ray.cluster_utils import Cluster

        os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # Cluster() writes its address there
        self.temp_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0, "object_store_memory": OBJECT_STORE, "include_dashboard": False,
            "temp_dir": self.temp_dir})
        self.cluster.add_node(num_cpus=cpus, num_gpus=0, object_store_memory=OBJECT_STORE)
        self.address = self.cluster.address

    def close(self) -> None:
        import shutil

        from ray._common.utils import get_ray_address_file

        self.cluster.shutdown()
        address_file = Path(get_ray_address_file(None))
        if address_file.exists() and address_file.read_text().strip() == self.address:
            address_file.unlink()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def run_executor(kind: str, url: str, name: str, slots: int, address: str | None, workdir: Path,
                 recycle: int | None = None) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    if kind == "agent":
        args = ["agent", "--gpus", "none", "--slots", str(slots), "--once"]
    else:
        args = ["agent", "--ray", str(address), "--gpus", "none", "--once"]
    if recycle:
        args += ["--recycle-after", str(recycle)]
    env = {**os.environ, "TUNER_SERVICE_STORAGE": url, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tuner_service", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    timing = slot_timing(done, slots)
    return {"executor": kind, "slots": slots, "recycle": recycle, "completed": len(done), "trials": len(trials),
            "wall_s": wall,
            "startup_s": timing["first"] - t0, "span_s": timing["span_s"], "throughput": len(done) / timing["span_s"],
            "utilisation": timing["utilisation"], "trial_s": timing["busy_s"] / len(done)}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--slots", default="1,2,4", help="slot counts (agent slots = Ray actors)")
    p.add_argument("--trials", type=int, default=6, help="trials per slot")
    p.add_argument("--sleep", type=float, default=1.0, help="seconds each trial sleeps before its fit")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--recycle-after", type=int, default=2,
                   help="also run the largest slot count with runners replaced after this many trials (0: skip)")
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.slots, args.trials, args.repeats = "1,2", 3, 1
    counts = [int(x) for x in args.slots.split(",")]
    os.environ["BENCH_TRIAL_SLEEP"] = str(args.sleep)  # the agent's runners and the Ray nodes inherit it
    runs: list[dict[str, Any]] = []
    data = {"source": f"{MODELS}:load_trivial", "validation_split": 0.2, "test_split": 0}
    with maybe_postgres(not args.no_postgres) as server, scratch_dir("ray") as directory:
        backend = "postgresql" if server is not None else "sqlite"
        for n in counts:
            log(f"ray_vs_agent: starting a local Ray cluster with {n} CPU(s)")
            node = RayNode(n)
            recycles = [None] + ([args.recycle_after] if args.recycle_after and n == max(counts) else [])
            try:
                for recycle in recycles:
                    for rep in range(args.repeats):
                        for kind in ("agent", "ray"):
                            name = f"{kind}_{n}_{recycle or 0}_{rep}"
                            url = fresh_url(backend, directory, server, name)
                            create_study(make_spec(name, model=f"{BENCH_DIR / 'ray_models.py'}:SleepTrivial",
                                                   max_trials=args.trials * n, max_epochs=1, seed=rep, data=data), url)
                            log(f"ray_vs_agent: {kind}, {n} slot(s), recycle after {recycle}, repeat {rep + 1}")
                            r = run_executor(kind, url, name, n, node.address, REPO, recycle)
                            r["repeat"] = rep
                            log(f"  {fmt(r['throughput'])} trials/s, utilisation {fmt(r['utilisation'])}, "
                                f"wall {fmt(r['wall_s'])} s")
                            runs.append(r)
            finally:
                node.close()
    md, summary = render(runs, counts, args, backend)
    targets = []
    for n in counts:
        if n > 1:
            a, r = summary[f"agent:{n}"], summary[f"ray:{n}"]
            targets.append(Target(f"scheduling efficiency, {n} slots, {fmt(args.sleep)} s trials, Ray / agent "
                                  "(no target)", f"{fmt(r['efficiency'])} / {fmt(a['efficiency'])}", "-", None))
    emit(args, "Ray executor vs the agent", md, {"runs": runs, "summary": summary}, targets)


def render(runs: list[dict[str, Any]], counts: list[int], args: Any, backend: str) -> tuple[str, dict[str, Any]]:
    summary: dict[str, Any] = {}
    keys = [(n, None) for n in counts] + sorted({(r["slots"], r["recycle"]) for r in runs if r["recycle"]})
    for kind in ("agent", "ray"):
        base = median([r["throughput"] for r in runs
                       if r["executor"] == kind and r["slots"] == counts[0] and not r["recycle"]])
        for n, recycle in keys:
            mine = [r for r in runs if r["executor"] == kind and r["slots"] == n and r["recycle"] == recycle]
            thr = median([r["throughput"] for r in mine])
            summary[f"{kind}:{n}" + (f":recycle{recycle}" if recycle else "")] = {
                "throughput": thr, "efficiency": thr / (n / counts[0] * base),
                "utilisation": median([r["utilisation"] for r in mine]),
                "wall_s": median([r["wall_s"] for r in mine]), "startup_s": median([r["startup_s"] for r in mine]),
                "trial_s": median([r["trial_s"] for r in mine]), "completed": [r["completed"] for r in mine]}
    rows = []
    for n, recycle in keys:
        for kind, label in (("agent", "agent (processes)"), ("ray", "Ray executor (actors)")):
            s = summary[f"{kind}:{n}" + (f":recycle{recycle}" if recycle else "")]
            rows.append([n, recycle or "-", label, fmt(s["throughput"]), fmt(s["efficiency"]), fmt(s["utilisation"]),
                         fmt(s["trial_s"]), fmt(s["startup_s"]), fmt(s["wall_s"]),
                         " / ".join(str(c) for c in s["completed"])])
    md = (f"{args.trials} trials per slot of {fmt(args.sleep)} s sleep + the trivial model's fit, {backend} storage, "
          f"{args.repeats} interleaved repeat(s), medians. Efficiency = throughput / (N x the same executor's "
          f"{counts[0]}-slot throughput); utilisation = sum of trial durations / (N x span from first start to last "
          "completion); start-up = command start to first trial start (runner processes or actors importing "
          "TensorFlow). Recycle: runners replaced after that many trials (`--recycle-after`), so the replacement "
          "of a process or an actor (and its TensorFlow import) is paid every few trials.\n\n"
          + table(["slots", "recycle", "executor", "trials/s", "efficiency", "utilisation", "trial s", "start-up s", "wall s",
                   "completed"], rows))
    return md, summary


if __name__ == "__main__":
    main()
