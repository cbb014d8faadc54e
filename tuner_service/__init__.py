"""tuner-service: hyperparameter search for Keras models on Optuna storage.

The public Python API (nothing here imports Keras or TensorFlow until a trial runs)::

    import tuner_service
    spec = tuner_service.load_spec("studies/digits.yaml", {"budget.max_trials": 5})
    tuner_service.submit(spec, "sqlite:///tuner.db", workers=2)
    tuner_service.best("digits", "sqlite:///tuner.db")
    model = tuner_service.load_model("models/digits/retrain-...")   # after `tuner-service retrain`
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "best", "load_model", "load_spec", "retrain", "status", "submit", "trials"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import tuner_service` (and the CLI) free of Optuna/Keras imports.
    if name in ("best", "trials", "status", "list_studies"):
        from tuner_service import queries  # the read side: no Optuna import

        return getattr(queries, name)
    if name == "submit":
        from tuner_service import service

        return service.submit
    if name == "load_spec":
        from tuner_service.spec import load_spec

        return load_spec
    if name == "retrain":
        from tuner_service.retrain import retrain

        return retrain
    if name == "load_model":
        from tuner_service.artifacts import load_model

        return load_model
    raise AttributeError(f"module 'tuner_service' has no attribute {name!r}")
