"""Models and data the Keras benchmarks share, usable from the service, plain Optuna and keras-tuner.

- ``load_trivial``: 320 random samples, 16 features, 2 classes; with the benchmarks'
  ``validation_split: 0.2`` that is 256 training samples, as in the earlier anchor
  (``/work/shared/anchors/keras_tuner_overhead.py``).
- ``build_trivial(hp)``: the anchor's model (Dense(units 4..32) + softmax, Adam with a log
  learning rate): Keras' per-model cost dominates, so anything else is overhead.
- ``TimedTrivial``: the same model as a keras-tuner ``HyperModel`` that times its own ``build``
  and ``fit`` (net of the time spent inside callbacks passed in by the framework, i.e. the
  service's epoch reporter or keras-tuner's checkpointing). The overhead benchmark subtracts
  exactly this build + fit time from each trial's wall time, identically for all three systems.
- ``OptunaHP``: the few ``hp`` methods the builders use, drawn from a plain Optuna trial, so the
  plain-Optuna baseline runs the identical builder.

Keras is imported at module level: only processes that train models import this file.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402
import numpy as np  # noqa: E402

TRIVIAL_SAMPLES = 320  # 256 train + 64 validation
TRIVIAL_FEATURES = 16

#: Hook names Keras calls on a callback during ``fit``; all are timed by ``_time_callbacks``.
_HOOKS = (
    "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
    "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
)


def load_trivial() -> tuple[np.ndarray, np.ndarray]:
    """The anchor's data: uniform features, random binary labels (nothing to learn: pure overhead)."""
    rng = np.random.default_rng(0)
    x = rng.random((TRIVIAL_SAMPLES, TRIVIAL_FEATURES)).astype("float32")
    y = rng.integers(0, 2, TRIVIAL_SAMPLES).astype("int64")
    return x, y


def build_trivial(hp: Any) -> Any:
    """The anchor's trivial model: one hidden Dense layer, Adam, sparse cross-entropy."""
    model = keras.Sequential([
        keras.layers.Input((TRIVIAL_FEATURES,)),
        keras.layers.Dense(hp.Int("units", 4, 32), activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class TimedTrivial(kt.HyperModel):
    """``build_trivial`` that records, per trial, its build time and its fit time net of
    framework callbacks (``timings``: one dict per fitted trial)."""

    def __init__(self) -> None:
        super().__init__()
        self.timings: list[dict[str, float]] = []
        self._build_s = 0.0

    def build(self, hp: Any) -> Any:
        t0 = time.perf_counter()
        model = build_trivial(hp)
        self._build_s = time.perf_counter() - t0
        return model

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        spent = [0.0]
        kwargs["callbacks"] = [_time_callbacks(cb, spent) for cb in kwargs.get("callbacks") or []]
        t0 = time.perf_counter()
        history = model.fit(*args, **kwargs)
        total = time.perf_counter() - t0
        self.timings.append({"build": self._build_s, "fit": total - spent[0], "callbacks": spent[0]})
        return history


def _time_callbacks(callback: Any, spent: list[float]) -> Any:
    """Wrap the callback's hooks (instance attributes shadow the class methods) so the time the
    framework spends in them accumulates in ``spent[0]``."""
    for name in _HOOKS:
        hook = getattr(callback, name, None)
        if hook is None:
            continue

        def timed(*a: Any, _hook: Any = hook, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _hook(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(callback, name, timed)
    return callback


def keras_tuner_without_tensorboard() -> None:
    """keras-tuner 1.4 imports ``tensorboard`` on every trial with the TensorFlow backend, even
    without a TensorBoard callback, and fails where it is not installed (tensorflow-cpu here).
    No benchmark uses TensorBoard, so skip that step when the package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from keras_tuner.src.engine import tuner as kt_tuner

        kt_tuner.Tuner._configure_tensorboard_dir = lambda self, callbacks, trial, execution=0: None


class OptunaHP:
    """The ``hp.Int/Float/Choice/Boolean`` subset the builders use, over a plain Optuna trial."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def Int(self, name: str, min_value: int, max_value: int, step: int | None = None,  # noqa: N802
            sampling: str = "linear", default: Any = None) -> int:
        return self.trial.suggest_int(name, min_value, max_value, step=step or 1, log=sampling == "log")

    def Float(self, name: str, min_value: float, max_value: float, step: float | None = None,  # noqa: N802
              sampling: str = "linear", default: Any = None) -> float:
        return self.trial.suggest_float(name, min_value, max_value, step=step, log=sampling == "log")

    def Choice(self, name: str, values: list[Any], default: Any = None) -> Any:  # noqa: N802
        return self.trial.suggest_categorical(name, values)

    def Boolean(self, name: str, default: bool = False) -> bool:  # noqa: N802
        return self.trial.suggest_categorical(name, [False, True])


class OptunaEpochReport(keras.callbacks.Callback):
    """What a plain-Optuna user writes to get learning curves: ``trial.report`` every epoch."""

    def __init__(self, trial: Any, objective: str = "val_accuracy") -> None:
        super().__init__()
        self.trial, self.objective = trial, objective
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = float((logs or {})[self.objective])
        self.best = value if self.best is None else max(self.best, value)
        self.trial.report(value, epoch + 1)
