"""The process settings a runner needs before Keras is imported, and what it runs on.

Only processes the service starts itself (the CLI, workers, agent runners, the keras-tuner
API's search workers) call :func:`process_defaults`; importing the package changes nothing
in a user's process.
"""

from __future__ import annotations

import os
from typing import Any

#: Set in the service's own processes unless already set. TF_CPP_MIN_LOG_LEVEL quiets
#: TensorFlow's C++ start-up chatter; JAX takes 75% of a GPU at start-up by default, so it
#: grows instead (submit's check, plain workers, retrain).
PROCESS_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


def process_defaults(env: dict[str, str] | None = None) -> dict[str, str]:
    """Apply :data:`PROCESS_DEFAULTS` to ``env`` (default: this process's environment, which
    also gets :func:`quiet_tensorflow`) where not set; returns ``env``."""
    target = os.environ if env is None else env
    for key, value in PROCESS_DEFAULTS.items():
        target.setdefault(key, value)
    if env is None:
        quiet_tensorflow()
    return target  # type: ignore[return-value]


def quiet_optuna() -> None:
    """The service's own processes report progress themselves: Optuna's info lines ("A new
    study created...") and its experimental-feature warnings (``set_metric_names``, TPE's
    ``group``, used on purpose) would only add noise. Imports Optuna (call it only where the
    process will use it anyway)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class _NotRetracing:
    """Drops TensorFlow's "N out of the last N calls to <function> triggered tf.function
    retracing" warning: every trial builds a new model, so each trial's train and test
    functions are traced once, by design; the warning would only alarm."""

    def filter(self, record: Any) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def quiet_tensorflow() -> None:
    """In the service's own processes only (part of :func:`process_defaults`): TensorFlow's
    retracing warning off (:class:`_NotRetracing`); its other messages stay. Imports nothing."""
    import logging

    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _NotRetracing) for f in tf_logger.filters):
        tf_logger.addFilter(_NotRetracing())


def onednn_too_late(speed: Any) -> str | None:
    """The ``TF_ENABLE_ONEDNN_OPTS`` value a study's ``speed.onednn`` asks for, if TensorFlow was
    already imported with another one (it reads the variable only at import); else None."""
    import sys

    if speed.onednn is None:
        return None
    wanted = "1" if speed.onednn else "0"
    if "tensorflow" in sys.modules and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != wanted:
        return wanted
    return None


def apply_speed(speed: Any) -> None:
    """A study's ``speed.onednn``, set before TensorFlow is imported (it reads the variable
    once); when it already is, a different setting is reported rather than silently ignored."""
    if speed.onednn is None:
        return
    if onednn_too_late(speed) is not None:
        import logging

        logging.getLogger("tuner_service").warning(
            "speed.onednn=%s cannot apply: TensorFlow was imported before with TF_ENABLE_ONEDNN_OPTS=%s",
            speed.onednn, os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"))
        return
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if speed.onednn else "0"


def configure_threads(threads: int | None) -> None:
    """Limit TensorFlow's thread pools so N workers on N cores do not oversubscribe."""
    if threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(max(1, threads)))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def configure_gpu() -> None:
    """Memory growth on every visible GPU, and a cap when the agent shares a GPU between
    runners (``TUNER_SERVICE_GPU_MEMORY_MB``). TensorFlow: a logical device of that size (else
    memory growth); torch: ``set_per_process_memory_fraction`` of that size (its caching
    allocator grows on demand anyway). JAX gets both from the environment the agent sets
    before the runner starts (``XLA_PYTHON_CLIENT_PREALLOCATE=false``,
    ``XLA_PYTHON_CLIENT_MEM_FRACTION``): they must be set before its GPU client exists."""
    import keras

    cap = os.environ.get("TUNER_SERVICE_GPU_MEMORY_MB")
    if keras.backend.backend() == "torch":
        import torch

        if cap and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                total = torch.cuda.get_device_properties(i).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, int(cap) * 2**20 / total), i)
        return
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if cap:
                tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(cap))])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: settings are fixed
            pass


def device_name(keras: Any) -> str:
    """The device trials run on: TensorFlow's first logical GPU, JAX's first device, torch's."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "CPU"
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    if keras.backend.backend() == "torch":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "unknown"
