"""TensorFlow's oneDNN CPU kernels on and off: speed and reproducibility, side by side.

Why: the service's processes set ``TF_ENABLE_ONEDNN_OPTS=0`` unless a study says otherwise
(``speed.onednn``). oneDNN can be faster on CPU but may reorder floating-point work, so the
same seeded trial could give different numbers in different runs. Measured here in fresh
processes, interleaved (off, on, off, on...): the seeded fit of the digits MLP of
``studies/digits_model.py`` (2 x 128 units, 9 epochs, batch 32, whole-epoch steps per execution
as the service runs it), its wall time, and whether its validation losses are identical across
processes and across 1 and 2 intra-op threads (what 2 workers on 2 cores get, against 1 worker).

Run: ``.venv/bin/python benchmarks/onednn.py [--repeats 4] [--quick]``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, emit, fmt, log, median, parser, table  # noqa: E402

CHILD = r"""
import json, os, time
import keras
from sklearn.datasets import load_digits
d = load_digits(); x = (d.images / 16).astype("float32"); y = d.target
xt, yt, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
keras.utils.set_random_seed(1)
t = time.perf_counter()
m = keras.Sequential([keras.layers.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                      keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")])
m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
m.steps_per_execution = 44
h = m.fit(xt, yt, validation_data=(xv, yv), epochs=9, batch_size=32, verbose=0)
print(json.dumps({"seconds": time.perf_counter() - t, "val_loss": h.history["val_loss"]}))
"""


def run(onednn: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3",
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-1500:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    results: dict[str, list[dict[str, Any]]] = {"0": [], "1": []}
    other_threads: dict[str, dict[str, Any]] = {}
    for rep in range(args.repeats):
        for onednn in (("0", "1") if rep % 2 == 0 else ("1", "0")):
            log(f"onednn: repeat {rep + 1}, TF_ENABLE_ONEDNN_OPTS={onednn}")
            results[onednn].append(run(onednn, 2))
    for onednn in ("0", "1"):
        other_threads[onednn] = run(onednn, 1)
    rows, data = [], {}
    for onednn, label in (("0", "off (the service's default)"), ("1", "on")):
        runs = results[onednn]
        same_processes = all(r["val_loss"] == runs[0]["val_loss"] for r in runs)
        diff_threads = max(abs(a - b) for a, b in zip(other_threads[onednn]["val_loss"], runs[0]["val_loss"]))
        data[onednn] = {"seconds": [r["seconds"] for r in runs], "median_s": median([r["seconds"] for r in runs]),
                        "identical_across_processes": same_processes, "max_diff_1_vs_2_threads": diff_threads}
        rows.append([label, len(runs), fmt(data[onednn]["median_s"]), " / ".join(fmt(r["seconds"]) for r in runs),
                     "yes" if same_processes else "no", fmt(diff_threads) if diff_threads else "0 (identical)"])
    speedup = data["0"]["median_s"] / data["1"]["median_s"]
    md = ("Seeded fit of a 2 x 128-unit MLP on digits (9 epochs, batch 32), fresh process each, interleaved; "
          "2 intra-op threads unless noted.\n\n"
          + table(["oneDNN", "runs", "fit s (median)", "per run", "same val_loss in every process",
                   "largest val_loss difference, 1 vs 2 threads"], rows)
          + f"\n\noneDNN on is {fmt(speedup)}x as fast as off (off median / on median).")
    targets = [Target("oneDNN on vs off, fit speed (no target: it decides the default)", f"{fmt(speedup)}x", "-", None)]
    emit(args, "oneDNN on and off", md, data, targets)


if __name__ == "__main__":
    main()
