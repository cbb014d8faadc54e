"""Sample ``nvidia-smi`` every ``--interval`` seconds until SIGTERM/SIGINT (GPU agent benchmark).

Writes one CSV row per GPU process per sample (``kind=app``: pid, used MiB) and one per sample
for the whole GPU (``kind=gpu``: utilization %, memory used MiB); the first time a pid is
seen, its pinning/memory environment is read from ``/proc/PID/environ`` (``kind=env``), which
shows what the agent set before the runner imported anything. Each sample also records the
machine's CPU use since the previous sample (``kind=cpu``: busy % of all cores, load average),
to tell a CPU-bound run from a GPU-bound one.

Run: ``python3 benchmarks/gpu/monitor.py --out smi.csv --phase k2 [--interval 0.5]``
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import time
from pathlib import Path

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "KERAS_BACKEND", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "TUNER_SERVICE_GPU_MEMORY_MB", "TF_FORCE_GPU_ALLOW_GROWTH")


def smi(query: str, what: str) -> list[list[str]]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-{what}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def proc_env(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
    return {k: env[k] for k in ENV_KEYS if k in env}


def cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return ""


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return ""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    seen: set[str] = set()
    busy0, total0 = cpu_times()
    with open(args.out, "a", newline="") as f:
        w = csv.writer(f)
        while not stop:
            t = time.time()
            for pid, used in (r[:2] for r in smi("pid,used_memory", "compute-apps") if len(r) >= 2):
                w.writerow([args.phase, f"{t:.3f}", "app", pid, used, ""])
                if pid not in seen:
                    seen.add(pid)
                    env = proc_env(pid)
                    w.writerow([args.phase, f"{t:.3f}", "env", pid, cmdline(pid),
                                ";".join(f"{k}={v}" for k, v in env.items())])
            for row in smi("utilization.gpu,memory.used", "gpu"):
                if len(row) >= 2:
                    w.writerow([args.phase, f"{t:.3f}", "gpu", "", row[0], row[1]])
            busy, total = cpu_times()
            if total > total0:
                w.writerow([args.phase, f"{t:.3f}", "cpu", "", f"{100 * (busy - busy0) / (total - total0):.1f}", loadavg()])
            busy0, total0 = busy, total
            f.flush()
            time.sleep(max(0.0, args.interval - (time.time() - t)))


if __name__ == "__main__":
    main()
