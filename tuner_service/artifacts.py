"""A retrained model on disk, and loading it back (:func:`load_model`).

``retrain`` writes, in its run directory::

    model.keras            the whole model (keras.models.load_model, when Keras can rebuild it alone)
    model.weights.h5       the weights (model.load_weights on build_model(hp))
    hyperparameters.json   the hp values the model was built with ({name: value})
    source/<file>.py       a copy of the model source the study was submitted with
    metrics.json           test metrics, and how to load (keys model_source, restore, inputs, load)

Keras records a custom class (a ``keras.Model`` subclass, a custom layer) by its name; loading
it back needs the class, so :func:`load_model` imports the study's model source (the copy,
with the original's directory on ``sys.path`` for its sibling imports) and hands its classes
and functions to Keras as ``custom_objects``. A ``keras.Model`` subclass that does not define
``get_config`` is not rebuilt from ``model.keras``: Keras 3 records such a model's constructor
arguments as their defaults (``Model.__new__`` drops them), which would load the wrong model,
or fail. Such models (``restore: rebuild``) are rebuilt the way they were trained,
``build_model(hp)`` with the recorded values, called once on zeros of the recorded input
shapes, then given ``model.weights.h5``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner_service.errors import BadInput, error_line

if TYPE_CHECKING:
    from tuner_service.spec import StudySpec

MODEL_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
HYPERPARAMETERS_FILE = "hyperparameters.json"
SOURCE_DIR = "source"
FILES = (MODEL_FILE, WEIGHTS_FILE, HYPERPARAMETERS_FILE)


def save(run_dir: Path, model: Any, *, spec: StudySpec, hp_values: dict[str, Any], x: Any) -> dict[str, Any]:
    """Write the model, its weights, its hyperparameters and a copy of its source; returns the
    entries metrics.json records about them."""
    from tuner_service.data import input_signature

    hyperparameters = json.dumps(hp_values, indent=2, sort_keys=True, default=_plain)
    model.save_weights(run_dir / WEIGHTS_FILE)
    (run_dir / HYPERPARAMETERS_FILE).write_text(hyperparameters)
    source = _copy_source(run_dir, spec.model)
    model_file: str | None = MODEL_FILE
    problem = ""
    try:
        model.save(run_dir / MODEL_FILE)
    except Exception as exc:  # a custom object Keras cannot serialise: the weights still load
        (run_dir / MODEL_FILE).unlink(missing_ok=True)
        model_file, problem = None, error_line(exc)
    restore = "keras" if model_file and _config_is_complete(model) else "rebuild"
    standalone = restore == "keras" and _loads_alone(run_dir / MODEL_FILE)
    return {
        "model_file": model_file,
        "weights_file": WEIGHTS_FILE,
        "hyperparameters_file": HYPERPARAMETERS_FILE,
        "model_source": source,
        "model_class": f"{type(model).__name__}",
        "restore": restore,
        "inputs": input_signature(x),
        "load": _how_to_load(run_dir, type(model).__name__, restore, standalone, problem),
    }


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers; anything else JSON cannot hold is refused, not guessed."""
    if hasattr(value, "item"):
        return value.item()
    raise BadInput(f"hyperparameter value {value!r} ({type(value).__name__}) cannot be written to "
                   f"{HYPERPARAMETERS_FILE}; use numbers, strings or booleans for hp values")


def _copy_source(run_dir: Path, ref: str) -> dict[str, Any]:
    from tuner_service.spec import model_source_path

    path = model_source_path(ref).resolve()
    (run_dir / SOURCE_DIR).mkdir(exist_ok=True)
    shutil.copy2(path, run_dir / SOURCE_DIR / path.name)
    return {"reference": ref, "file": str(path), "copy": f"{SOURCE_DIR}/{path.name}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _config_is_complete(model: Any) -> bool:
    """Whether ``model.keras`` recreates this model: Keras' own Sequential/Functional, or a
    subclass that writes its own ``get_config``."""
    import keras

    cls = type(model)
    if cls.__module__.split(".")[0] == "keras":
        return True
    return any("get_config" in vars(c) for c in cls.__mro__[: cls.__mro__.index(keras.Model)])


def _loads_alone(path: Path) -> bool:
    """Whether plain ``keras.models.load_model`` (no custom objects) reads the file."""
    import keras

    try:
        keras.models.load_model(path)
    except Exception:
        return False
    finally:
        keras.backend.clear_session()
    return True


def _how_to_load(run_dir: Path, cls: str, restore: str, standalone: bool, problem: str) -> str:
    ours = f"tuner_service.load_model({str(run_dir)!r})"
    if restore == "keras" and standalone:
        return f"{ours}, or keras.models.load_model({str(run_dir / MODEL_FILE)!r})"
    if restore == "keras":
        return (f"{ours} (imports the model source so its classes resolve; keras.models.load_model needs them "
                "as custom_objects)")
    why = f"Keras could not save the whole model ({problem})" if problem else \
        f"{cls} does not define get_config, so model.keras cannot recreate it"
    return f"{ours} (rebuilds build_model(hp) from {HYPERPARAMETERS_FILE} and loads {WEIGHTS_FILE}: {why})"


# ---------------------------------------------------------------------------- loading


def load_model(path: str | Path, *, compile: bool = True) -> Any:
    """Load a model written by ``tuner-service retrain``: its run directory, or a file in it.

    Imports the study's model source (so subclasses, custom layers and custom functions
    resolve), then reads ``model.keras``, or rebuilds ``build_model(hp)`` from the recorded
    hyperparameters and loads the weights when ``model.keras`` cannot recreate the model (see
    the module docstring). A ``.keras`` file not written by retrain is read with
    ``keras.models.load_model``."""
    import keras

    p = Path(path)
    run_dir = p if p.is_dir() else p.parent
    meta_path = run_dir / "metrics.json"
    if not p.exists():
        raise BadInput(f"no model at {str(p)!r}; give a retrain directory (models/STUDY/retrain-...) or its model.keras")
    if not meta_path.is_file():
        if p.is_dir():
            raise BadInput(f"{str(p)!r} has no metrics.json; give a directory written by tuner-service retrain")
        return keras.models.load_model(p, compile=compile)
    meta = json.loads(meta_path.read_text())
    module = _import_source(run_dir, meta.get("model_source"))
    custom = _custom_objects(module) if module is not None else {}
    model_file = meta.get("model_file")
    if meta.get("restore", "keras") == "keras" and model_file and (run_dir / model_file).is_file():
        return keras.models.load_model(run_dir / model_file, custom_objects=custom, compile=compile)
    if module is None:
        raise BadInput(f"{str(run_dir)!r}: the model must be rebuilt from its source, and metrics.json names none")
    return _rebuild(run_dir, meta, module)


def _import_source(run_dir: Path, source: dict[str, Any] | None) -> Any:
    import importlib

    from tuner_service.runners._user_code import import_user_file
    from tuner_service.spec import split_model_ref

    if not source:
        return None
    target, _ = split_model_ref(source["reference"])
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except Exception as exc:
            raise BadInput(f"importing model module {target!r} failed ({error_line(exc)}); install the package "
                           "the study was submitted with") from None
    copy = run_dir / source.get("copy", "")
    original = Path(source.get("file", ""))
    if copy.is_file():  # the code the model was trained with; its siblings are beside the original
        return import_user_file(copy, "model", search_path=original.parent if original.parent.is_dir() else None)
    if original.is_file():
        return import_user_file(original, "model")
    raise BadInput(f"{str(run_dir)!r}: the model source {source.get('copy')} is missing and {str(original)!r} "
                   "is gone; copy the model file back")


def _custom_objects(module: Any) -> dict[str, Any]:
    """The classes and functions the user's file defines or imports (not Keras' own), keyed
    by the name Keras records for them."""
    found: dict[str, Any] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if (getattr(obj, "__module__", "") or "").split(".")[0] in ("keras", "tensorflow", "numpy", "builtins"):
            continue
        found[getattr(obj, "__name__", name)] = obj
        found.setdefault(name, obj)
    return found


def _rebuild(run_dir: Path, meta: dict[str, Any], module: Any) -> Any:
    from tuner_service.hp import fixed
    from tuner_service.runners._user_code import as_hypermodel
    from tuner_service.spec import split_model_ref

    _, attr = split_model_ref(meta["model_source"]["reference"])
    values = json.loads((run_dir / meta.get("hyperparameters_file", HYPERPARAMETERS_FILE)).read_text())
    builder = getattr(module, attr)
    if _takes_hp(builder):
        model = as_hypermodel(builder).build(fixed(values))
    else:  # a plain builder of a grid study: its arguments are the model__ grid keys
        model = builder(**{k[len("model__"):]: v for k, v in values.items() if k.startswith("model__")})
    if not model.built:  # a subclassed model creates its weights on its first call
        model(_zeros(meta["inputs"]))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:  # the weights file holds its state too
        optimizer.build(model.trainable_variables)
    model.load_weights(run_dir / meta.get("weights_file", WEIGHTS_FILE))
    return model


def _takes_hp(obj: Any) -> bool:
    if inspect.isclass(obj) or hasattr(obj, "build"):
        return True
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return True
    return bool(params) and params[0] == "hp"


def _zeros(signature: Any) -> Any:
    """One sample of zeros in the structure and shapes metrics.json's ``inputs`` records."""
    import numpy as np

    if isinstance(signature, dict) and set(signature) == {"shape", "dtype"}:
        return np.zeros([1, *signature["shape"][1:]], dtype=signature["dtype"])
    if isinstance(signature, dict):
        return {k: _zeros(v) for k, v in signature.items()}
    return [_zeros(v) for v in signature]
