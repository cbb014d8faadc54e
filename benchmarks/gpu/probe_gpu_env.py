"""Check the per-runner GPU environment the agent builds, on a real GPU (GPU agent benchmark).

For each case, a child process is started with exactly the environment ``Agent._slot_env``
gives a runner of that slot (``current``), or the one the agent gave before the JAX/torch
memory settings were added (``baseline``: a verbatim copy of the old ``_slot_env`` below), and:

1. imports Keras on the chosen backend and calls ``runner.configure_gpu()`` (baseline torch
   cases skip it: the old ``configure_gpu`` returned at once for every backend but TensorFlow);
2. reports ``runner.device_name(keras)`` and the process's own GPU memory (``nvidia-smi``) after
   the backend has started and run one small op (JAX's preallocation shows here);
3. optionally tries to allocate ``--alloc-frac`` of the GPU's memory in one array, and reports
   whether that succeeded: with K=2 runners per GPU the cap is 45% of the GPU, so 60% must fail.

Prints one JSON line per case. Run on the GPU machine, from the repo root:
``python3 benchmarks/gpu/probe_gpu_env.py [--backends jax,torch]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def baseline_slot_env(url: str, slot: object) -> dict[str, str]:
    """``Agent._slot_env`` as it was before this benchmark (git HEAD of 2026-11-22)."""
    env = {**os.environ, "TUNER_SERVICE_STORAGE": url, "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,  # type: ignore[attr-defined]
           "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if slot.memory_mb:  # type: ignore[attr-defined]
        env["TUNER_SERVICE_GPU_MEMORY_MB"] = str(slot.memory_mb)  # type: ignore[attr-defined]
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def own_gpu_mib() -> float | None:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def child(args: argparse.Namespace) -> None:
    t0 = time.time()
    result: dict[str, object] = {"case": args.case, "pid": os.getpid()}
    import keras

    from tuner_service.runners import _env as runner

    if args.configure:
        runner.configure_gpu()
    result["backend"] = keras.backend.backend()
    result["device"] = runner.device_name(keras)
    total_mib = float(os.environ.get("PROBE_TOTAL_MIB", "0"))
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        result["jax_devices"] = [str(d) for d in jax.devices()]
        jnp.ones(16).block_until_ready()

        def alloc(n: int) -> object:
            x = jnp.ones((n,), dtype=jnp.float32)
            x.block_until_ready()
            return x
    else:
        import torch

        result["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            torch.ones(16, device="cuda").sum().item()

        def alloc(n: int) -> object:
            x = torch.empty((n,), dtype=torch.float32, device="cuda")
            x.fill_(1.0)
            torch.cuda.synchronize()
            return x
    time.sleep(1.0)  # let nvidia-smi see the process
    result["gpu_mib_after_start"] = own_gpu_mib()
    if args.alloc_frac and total_mib:
        # In 1 GiB arrays (no single huge array): what counts is the process's total.
        chunk = 2**30 // 4
        chunks = int(args.alloc_frac * total_mib * 2**20 / 4) // chunk
        result["alloc_mib"] = chunks * 1024
        held = []
        try:
            for _ in range(chunks):
                held.append(alloc(chunk))
            time.sleep(1.0)
            result["alloc"] = "ok"
            result["gpu_mib_holding"] = own_gpu_mib()
        except Exception as exc:  # RESOURCE_EXHAUSTED (JAX) / OutOfMemoryError (torch)
            result["alloc"] = f"failed after {len(held)} GiB: {type(exc).__name__}: " \
                f"{str(exc).strip().splitlines()[0][:200]}"
        del held
    result["seconds"] = round(time.time() - t0, 1)
    print("PROBE " + json.dumps(result), flush=True)


def parent(args: argparse.Namespace) -> None:
    from tuner_service.agent import Agent, gpu_memory_mb, make_slots

    total = gpu_memory_mb("0") or 0
    print(f"GPU 0 total memory: {total} MiB", flush=True)

    def agent_for(slots: list) -> Agent:
        agent = Agent.__new__(Agent)  # no storage needed to build an environment
        agent.url, agent.slots = "sqlite:////tmp/probe.db", slots
        return agent

    k1, k2 = make_slots(["0"], 1, None), make_slots(["0"], 2, None)
    cpu = make_slots([], 1, 1)
    cases = []
    for backend in args.backends.split(","):
        cases += [
            (f"{backend} K=1 baseline env", backend, baseline_slot_env("u", k1[0]), backend != "torch", 0.0),
            (f"{backend} K=1 current env", backend, agent_for(k1)._slot_env(k1[0]), True, 0.0),
            (f"{backend} K=2 baseline env, alloc 60%", backend, baseline_slot_env("u", k2[0]), backend != "torch", 0.6),
            (f"{backend} K=2 current env, alloc 60%", backend, agent_for(k2)._slot_env(k2[0]), True, 0.6),
            (f"{backend} K=2 current env, alloc 35%", backend, agent_for(k2)._slot_env(k2[0]), True, 0.35),
            (f"{backend} --gpus none slot (CUDA_VISIBLE_DEVICES='')", backend, agent_for(cpu)._slot_env(cpu[0]),
             True, 0.0),
        ]
    for name, backend, env, configure, frac in cases:
        env = {**env, "KERAS_BACKEND": backend, "PROBE_TOTAL_MIB": str(total), "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        shown = {k: env[k] for k in sorted(env) if k.startswith(("XLA_", "TUNER_SERVICE_GPU", "CUDA_VISIBLE"))}
        cmd = [sys.executable, __file__, "--child", "--case", name, "--alloc-frac", str(frac)]
        if configure:
            cmd.append("--configure")
        print(f"== {name}: env {shown}", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
            if lines:
                print(lines[-1], flush=True)
            else:
                print(f"PROBE {json.dumps({'case': name, 'exit': proc.returncode, 'stderr': proc.stderr[-1500:]})}",
                      flush=True)
        except subprocess.TimeoutExpired:
            print(f"PROBE {json.dumps({'case': name, 'error': 'timeout'})}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--case", default="")
    p.add_argument("--configure", action="store_true")
    p.add_argument("--alloc-frac", type=float, default=0.0)
    p.add_argument("--backends", default="jax,torch")
    p.add_argument("--timeout", type=float, default=90)
    args = p.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
