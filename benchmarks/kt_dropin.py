"""The same keras-tuner script run with ``import keras_tuner as kt`` and with
``import tuner_service.keras_tuner as kt``: same model, data, budget and seed; prints the
search's wall time and the best val_accuracy of each side by side.

    .venv/bin/python benchmarks/kt_dropin.py                  # RandomSearch, 10 trials x 5 epochs
    .venv/bin/python benchmarks/kt_dropin.py --trials 4 --epochs 2 --workers 2

Each side runs in its own fresh process (so neither pays for the other's imports or
graphs); the timed part is the tuner's construction plus ``search()``. ``--workers`` applies
to the tuner-service side only (keras-tuner has no local multi-process search).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

IMPLEMENTATIONS = {"keras_tuner": "keras_tuner", "tuner_service": "tuner_service.keras_tuner"}
MARKER = "KT_DROPIN_RESULT "


def build_model(hp: Any) -> Any:
    """A conditional space: the number of layers decides which units_i exist."""
    import keras

    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten()])
    for i in range(hp.Int("num_layers", 1, 3)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 16, 128, step=16), activation="relu"))
        if hp.Boolean("dropout"):
            model.add(keras.layers.Dropout(0.2))
    model.add(keras.layers.Dense(10, activation="softmax"))
    lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_data(seed: int) -> tuple[Any, Any, Any, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    return tuple(train_test_split(x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target))


def _without_tensorboard() -> None:
    """keras-tuner 1.4 imports ``tensorboard`` on every trial with the TensorFlow backend, even
    with no TensorBoard callback, and fails where it is not installed (as in tensorflow-cpu
    environments without it). No callback here uses it, so skip that step there."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from keras_tuner.src.engine import tuner as kt_tuner

        kt_tuner.Tuner._configure_tensorboard_dir = lambda self, callbacks, trial, execution=0: None


def run_one(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the keras-tuner script with ``impl``'s ``kt``; only the import differs."""
    kt = importlib.import_module(IMPLEMENTATIONS[impl])
    if impl == "keras_tuner":
        _without_tensorboard()
    x_tr, x_val, y_tr, y_val = load_data(args.seed)
    extra = {"workers": args.workers} if impl == "tuner_service" and args.workers > 1 else {}
    started = time.perf_counter()
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=args.trials, seed=args.seed,
                            directory=args.directory, project_name=f"kt_dropin_{impl}", overwrite=True)
    tuner.search(x_tr, y_tr, epochs=args.epochs, validation_data=(x_val, y_val), verbose=0, **extra)
    wall = time.perf_counter() - started
    best = tuner.oracle.get_best_trials(1)[0]
    model = tuner.get_best_models(1)[0]
    reloaded = float(model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"])
    return {"impl": impl, "wall_s": round(wall, 2), "best_val_accuracy": float(best.score),
            "best_model_val_accuracy": reloaded, "trials": len(tuner.oracle.trials),
            "best_hp": tuner.get_best_hyperparameters(1)[0].values}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=1, help="tuner-service side only")
    p.add_argument("--only", choices=sorted(IMPLEMENTATIONS), help="run one side")
    p.add_argument("--directory", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = run_one(args.child, args)
        sys.stdout.write(MARKER + json.dumps(result) + "\n")
        return 0

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kt_dropin_") as directory:
        for impl in [args.only] if args.only else list(IMPLEMENTATIONS):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--directory", directory,
                   "--trials", str(args.trials), "--epochs", str(args.epochs), "--seed", str(args.seed),
                   "--workers", str(args.workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                sys.stderr.write(f"{impl}: failed with exit code {proc.returncode}\n")
                return 1
            rows.append(json.loads(lines[-1][len(MARKER):]))

    sys.stdout.write(f"RandomSearch, {args.trials} trials x {args.epochs} epochs on digits, seed {args.seed}"
                     + (f", tuner-service workers={args.workers}" if args.workers > 1 else "") + "\n")
    header = f"{'implementation':<16}{'wall s':>9}{'best val_acc':>14}{'reloaded':>10}{'trials':>8}"
    sys.stdout.write(header + "\n" + "-" * len(header) + "\n")
    for r in rows:
        sys.stdout.write(f"{r['impl']:<16}{r['wall_s']:>9.2f}{r['best_val_accuracy']:>14.4f}"
                         f"{r['best_model_val_accuracy']:>10.4f}{r['trials']:>8}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
