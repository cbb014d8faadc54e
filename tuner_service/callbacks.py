"""What a study's ``fit:`` section adds to ``model.fit``: Keras callbacks and fit arguments.

``fit.callbacks`` lists callbacks by Keras name with their arguments, or by reference to the
user's code::

    fit:
      callbacks:
        - ReduceLROnPlateau: {factor: 0.5, patience: 2}
        - ModelCheckpoint: {filepath: best.keras, save_best_only: true}
        - callbacks.py:PrintValTrainRatio              # a keras.callbacks.Callback subclass
        - LearningRateScheduler: {schedule: callbacks.py:halve_every_5}   # an argument from the user's code
      class_weight: balanced                            # or {0: 1.0, 1: 5.0}
      validation_freq: 2

- The study file is checked without Keras (:class:`CallbackSpec`): the form of each entry,
  that a referenced file defines the name, that paths are relative. ``submit``'s model check
  then resolves every name against ``keras.callbacks`` (or the user's file), binds the
  arguments to the class' signature (an unknown or missing argument is one line naming it),
  builds them and runs them for the check's one epoch, and checks that every ``monitor`` is a
  metric the model logs. Nothing is written before that.
- Each trial builds its callbacks afresh (:func:`build`): no state (a ``ReduceLROnPlateau``
  wait count, a ``ModelCheckpoint`` best value) leaks from one trial into the next.
- Paths a callback writes (``filepath``, ``filename``, ``log_dir``, ``directory``; also a
  built-in's default such as TensorBoard's ``logs``) are relative and placed under the
  trial's own directory, ``$TUNER_SERVICE_TRIALS/<study>/trial-<number>/`` (default
  ``./trials``, relative to the worker's working directory); ``retrain`` places them under
  its output directory. ``BackupAndRestore`` is ``checkpoints: true``.
- A callback that watches a metric (``monitor``) and takes a ``mode`` gets the direction the
  metric's name tells, as the objective does, unless the entry sets ``mode``.
- A string argument written ``file.py:name`` is that object of the user's file (a schedule
  function for ``LearningRateScheduler``, say), resolved relative to the study file.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuner_service.errors import BadInput, error_line
from tuner_service.runners._user_code import check_code_ref

if TYPE_CHECKING:
    from tuner_service.spec import FitSpec

#: Arguments that name a file or directory the callback writes.
PATH_ARGS = ("filepath", "filename", "log_dir", "backup_dir", "directory")
#: Keras' callbacks a study cannot list: the machinery (``Callback`` is the base class, Keras adds
#: ``History`` and ``ProgbarLogger`` itself) and the one ``checkpoints: true`` manages.
_NOT_LISTABLE = {"Callback": "it is the base class; subclass it in your file and reference file.py:Name",
                 "CallbackList": "it is Keras' container; list the callbacks themselves",
                 "History": "Keras adds it to every fit; the trial records the history",
                 "BackupAndRestore": "set checkpoints: true (per-epoch BackupAndRestore that a re-queued trial "
                                     "resumes from)"}
_CODE_REF = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
TRIALS_ENV = "TUNER_SERVICE_TRIALS"


class CallbackSpec(BaseModel):
    """One ``fit.callbacks`` entry: ``Name``, ``Name: {args}`` or ``file.py:Name: {args}``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value:
            if len(value) != 1:
                raise ValueError(f"a callback is one name with its arguments (- ReduceLROnPlateau: {{factor: 0.5}}); "
                                 f"got the keys {', '.join(map(str, value))} in one list item")
            ((name, args),) = value.items()
            if args is not None and not isinstance(args, dict):
                raise ValueError(f"arguments of {name} must be a mapping ({name}: {{arg: value}}), got {args!r}")
            return {"name": name, "args": args or {}}
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if ":" in v:
            check_code_ref(v, "callback")
        elif not v.isidentifier():
            raise ValueError(f"callback {v!r} is neither a Keras callback name (ReduceLROnPlateau) nor "
                             "path/to/file.py:ClassName")
        elif v in _NOT_LISTABLE:
            raise ValueError(f"callback {v} cannot be listed: {_NOT_LISTABLE[v]}")
        return v

    @model_validator(mode="after")
    def _args(self) -> CallbackSpec:
        for key, value in self.args.items():
            if not key.isidentifier():
                raise ValueError(f"{self.name}: argument name {key!r} is not a Python name")
            if key in PATH_ARGS and isinstance(value, str):
                p = PurePath(value)
                if p.is_absolute() or ".." in p.parts:
                    raise ValueError(f"{self.name}: {key} {value!r} must be a relative path inside the trial's "
                                     f"directory (it is placed under {TRIALS_ENV}/<study>/trial-<n>/); write e.g. "
                                     f"{key}: {p.name or 'out'}")
            if isinstance(value, str) and _CODE_REF.match(value):
                check_code_ref(value, f"{self.name}'s argument {key}")
        return self


def resolve_refs(entries: list[Any], resolve: Any) -> list[Any]:
    """Apply ``resolve`` (a path resolver relative to the study file) to every ``file.py:name``
    in raw (unvalidated) ``fit.callbacks`` entries."""
    def one(value: Any) -> Any:
        return resolve(value) if isinstance(value, str) and _CODE_REF.match(value) else value

    out: list[Any] = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(one(entry))
        elif isinstance(entry, dict) and "name" not in entry and len(entry) == 1:
            ((name, args),) = entry.items()
            args = {k: one(v) for k, v in args.items()} if isinstance(args, dict) else args
            out.append({one(name): args})
        elif isinstance(entry, dict) and "name" in entry:
            args = entry.get("args")
            args = {k: one(v) for k, v in args.items()} if isinstance(args, dict) else args
            out.append({**entry, "name": one(entry["name"]), **({"args": args} if "args" in entry else {})})
        else:
            out.append(entry)
    return out


# ---------------------------------------------------------------------------- with Keras


def resolve(entry: CallbackSpec) -> tuple[Any, inspect.Signature | None]:
    """The class (or factory) an entry names and its signature; unknown names and arguments
    are one ``BadInput`` line."""
    import keras

    if ":" in entry.name:
        from tuner_service.runners._user_code import import_user_object

        obj = import_user_object(entry.name, what="callback")
        if isinstance(obj, keras.callbacks.Callback):
            raise BadInput(f"fit.callbacks: {entry.name} is a callback instance; reference its class (or a function "
                           "returning one) so that every trial gets a fresh one")
        if not callable(obj):
            raise BadInput(f"fit.callbacks: {entry.name} is a {type(obj).__name__}, not a keras.callbacks.Callback "
                           "class")
        if inspect.isclass(obj) and not issubclass(obj, keras.callbacks.Callback):
            raise BadInput(f"fit.callbacks: {entry.name} is not a subclass of keras.callbacks.Callback")
        strict = False
    else:
        obj = getattr(keras.callbacks, entry.name, None)
        if not (inspect.isclass(obj) and issubclass(obj, keras.callbacks.Callback)):
            raise BadInput(f"fit.callbacks: unknown Keras callback {entry.name!r}; use one of "
                           f"{', '.join(keras_callback_names())} or path/to/file.py:ClassName")
        strict = True  # Keras' own: an argument caught by **kwargs would be ignored silently
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj, None
    params = signature.parameters
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in entry.args:
        if key not in named and (strict or not takes_any):
            raise BadInput(f"fit.callbacks: {_short(entry.name)} has no argument {key!r}; its arguments: "
                           f"{', '.join(named) or 'none'}")
    missing = [n for n, p in params.items()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and n not in entry.args]
    if missing:
        raise BadInput(f"fit.callbacks: {_short(entry.name)} needs the argument {missing[0]!r}; write "
                       f"- {entry.name}: {{{missing[0]}: ...}}")
    return obj, signature


def keras_callback_names() -> list[str]:
    import keras

    return sorted(n for n in dir(keras.callbacks)
                  if inspect.isclass(getattr(keras.callbacks, n)) and n not in _NOT_LISTABLE
                  and issubclass(getattr(keras.callbacks, n), keras.callbacks.Callback)
                  and n != "ProgbarLogger")


def build(entries: list[CallbackSpec], directory: Path | None) -> list[Any]:
    """Fresh callbacks for one fit; relative paths go under ``directory`` (created on demand)."""
    import keras

    out = []
    for entry in entries:
        obj, signature = resolve(entry)
        kwargs = {k: _code_object(v, entry, k) for k, v in entry.args.items()}
        for key in PATH_ARGS:
            value = kwargs.get(key)
            if value is None and signature is not None and key in signature.parameters:
                default = signature.parameters[key].default
                value = default if isinstance(default, str) else None
            if isinstance(value, str):
                if directory is None:
                    raise BadInput(f"fit.callbacks: {_short(entry.name)} writes {key}={value!r} but this fit has no "
                                   "trial directory")
                path = directory / value
                path.parent.mkdir(parents=True, exist_ok=True)
                kwargs[key] = str(path)
        if signature is not None and "mode" in signature.parameters and "mode" not in kwargs:
            monitor = kwargs.get("monitor", signature.parameters.get("monitor", signature.parameters["mode"]).default)
            if isinstance(monitor, str):
                kwargs["mode"] = monitor_mode(monitor)
        try:
            callback = obj(**kwargs)
        except Exception as exc:
            raise BadInput(f"fit.callbacks: {_short(entry.name)}({_show(entry.args)}) raised {error_line(exc)}") from None
        if not isinstance(callback, keras.callbacks.Callback):
            raise BadInput(f"fit.callbacks: {entry.name} returned a {type(callback).__name__}, not a "
                           "keras.callbacks.Callback")
        out.append(callback)
    return out


def monitor_mode(metric: str) -> str:
    """``min``/``max`` for a metric whose direction its name tells (as for ``objective:``), else
    ``auto``. Keras' own inference knows ``loss`` and the compiled metrics by their bare names,
    not a multi-output model's ``val_main_loss`` or ``val_main_root_mean_squared_error``."""
    from tuner_service.spec import infer_direction

    try:
        return "max" if infer_direction(metric) == "maximize" else "min"
    except ValueError:
        return "auto"


def monitors(entries: list[CallbackSpec]) -> list[tuple[str, str]]:
    """``(callback name, metric)`` for every callback that watches a metric (its ``monitor``
    argument, or the class' default)."""
    found = []
    for entry in entries:
        value = entry.args.get("monitor")
        if value is None:
            obj, signature = resolve(entry)
            param = signature.parameters.get("monitor") if signature is not None else None
            value = param.default if param is not None and isinstance(param.default, str) else None
        if isinstance(value, str):
            found.append((_short(entry.name), value))
    return found


def trial_directory(study: str, number: int) -> Path:
    """Where trial ``number``'s callbacks write: ``$TUNER_SERVICE_TRIALS/<study>/trial-<number>``."""
    return Path(os.environ.get(TRIALS_ENV, "trials")) / study / f"trial-{number}"


def fit_arguments(fit: FitSpec, y_train: Any, *, validation: bool) -> dict[str, Any]:
    """``model.fit`` keyword arguments from ``fit:`` beyond epochs/batch_size/shuffle/callbacks
    (``validation=False``: for a fit without validation data, as in ``retrain``)."""
    kwargs: dict[str, Any] = {}
    if fit.class_weight == "balanced":
        kwargs["class_weight"] = balanced_class_weight(y_train)
    elif fit.class_weight is not None:
        kwargs["class_weight"] = {int(k): float(v) for k, v in fit.class_weight.items()}
    if fit.steps_per_epoch is not None:
        kwargs["steps_per_epoch"] = fit.steps_per_epoch
    if validation:
        for name in ("validation_freq", "validation_steps", "validation_batch_size"):
            if getattr(fit, name) is not None:
                kwargs[name] = getattr(fit, name)
    return kwargs


def balanced_class_weight(y: Any) -> dict[int, float]:
    """scikit-learn's ``class_weight="balanced"``: n_samples / (n_classes * count(class))."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from tuner_service.data import single_target

    target = single_target(y)
    if target is None or np.asarray(target).ndim != 1 or np.asarray(target).dtype.kind not in "iub":
        raise BadInput("fit.class_weight: balanced needs one target of integer class labels; give "
                       "class_weight: {label: weight, ...} or drop it")
    classes = np.unique(target)
    weights = compute_class_weight("balanced", classes=classes, y=target)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def _code_object(value: Any, entry: CallbackSpec, key: str) -> Any:
    if isinstance(value, str) and _CODE_REF.match(value):
        from tuner_service.runners._user_code import import_user_object

        return import_user_object(value, what=f"{_short(entry.name)}'s argument {key}")
    return value


def _short(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def _show(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
