"""The study spec: a YAML file validated at the boundary, overridable field by field.

Example (``studies/digits.yaml``)::

    name: digits
    model: digits_model.py:build_model     # path relative to this file, or package.module:attr
    data: {source: "sklearn:digits"}
    objective: val_accuracy                # direction inferred; or {name: ..., direction: ...}
    tuner: tpe                             # or {name: hyperband, factor: 3}
    budget: {max_trials: 12, max_epochs: 8}
    fit: {batch_size: 32}
    seed: 42

The validated spec is stored with the study (study user attr ``spec``) together with the
SHA-256 of the model source, so a worker on another machine runs exactly what was submitted.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner_service.callbacks import CallbackSpec, resolve_refs
from tuner_service.errors import BadInput

_MAXIMIZE_HINTS = ("acc", "auc", "precision", "recall", "f1", "r2", "iou", "score", "similarity")
_MINIMIZE_HINTS = ("loss", "error", "mse", "mae", "mape", "msle", "rmse", "crossentropy", "hinge", "divergence",
                   "poisson", "cosh")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


class DataSpec(_Strict):
    """Where the data comes from and how it is split (deterministically, by ``seed``)."""

    source: str = "sklearn:digits"
    validation_split: float = Field(0.2, gt=0, lt=1)
    test_split: float = Field(0.2, ge=0, lt=1)
    stratify: bool = Field(True, description="stratify the splits of a classification task with one target")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        from tuner_service.data import check_source

        check_source(v)
        return v


class ObjectiveSpec(_Strict):
    """The metric Keras logs per epoch and its direction: any name in the fit's logs
    (``val_accuracy``, ``val_loss``; per output of a multi-output model ``val_<output>_loss``,
    ``val_<output>_<metric>``), checked against what the model logs by submit's model check."""

    name: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _infer_direction(self) -> ObjectiveSpec:
        if self.direction is None:
            self.direction = infer_direction(self.name)
        return self


#: Metrics the runner measures itself (besides any metric Keras logs), for objectives and
#: constraints: the trainable parameter count, the median time of one inference batch after
#: training (milliseconds), and the bytes of the model's weights.
BUILTIN_METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "params": "minimize", "latency_ms": "minimize", "model_bytes": "minimize",
}


def infer_direction(metric: str) -> Literal["maximize", "minimize"]:
    """From the metric's own name, read from its end: a multi-output model prefixes it with the
    output's name (``val_error_head_accuracy`` is an accuracy), so the hint that ends last wins."""
    if metric in BUILTIN_METRICS:
        return BUILTIN_METRICS[metric]
    base = metric.lower().removeprefix("val_")
    found = [(base.rfind(h) + len(h), len(h), direction)
             for hints, direction in ((_MINIMIZE_HINTS, "minimize"), (_MAXIMIZE_HINTS, "maximize"))
             for h in hints if h in base]
    if found:
        return max(found)[2]  # type: ignore[return-value]
    raise ValueError(
        f"cannot infer whether to maximize or minimize {metric!r}; "
        "write objective: {name: ..., direction: maximize|minimize}"
    )


class TunerSpec(_Strict):
    """A tuner name and its options; options are validated by the tuner's own model."""

    name: str = "tpe"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        # Accept `tuner: tpe` and `tuner: {name: hyperband, factor: 3}` as well as the
        # canonical `{name: ..., options: {...}}`.
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "options" not in value:
            return {"name": value.get("name", "tpe"), "options": {k: v for k, v in value.items() if k != "name"}}
        return value

    @model_validator(mode="after")
    def _check_options(self) -> TunerSpec:
        from tuner_service.tuners import validate_options

        self.__dict__["options"] = validate_options(self.name, self.options)
        return self


class BudgetSpec(_Strict):
    max_trials: int | None = Field(None, gt=0, description="default 20; Hyperband: keras-tuner's count")
    max_epochs: int | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0, description="seconds from the study's start")


class EarlyStoppingSpec(_Strict):
    monitor: str = "val_loss"
    patience: int = Field(2, ge=0)
    min_delta: float = 0.0
    restore_best_weights: bool = False
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: from the metric's name, as objective:")


class FitSpec(_Strict):
    """``model.fit``'s arguments; callbacks and the extra arguments: :mod:`tuner_service.callbacks`."""

    epochs: int | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)
    shuffle: bool = True
    early_stopping: EarlyStoppingSpec | None = None
    tensorboard: str | None = Field(None, description="directory for per-trial TensorBoard logs with HParams")
    callbacks: list[CallbackSpec] = Field(default_factory=list, description="Keras callbacks, built per trial")
    class_weight: dict[int, float] | Literal["balanced"] | None = None
    steps_per_epoch: int | None = Field(None, gt=0)
    validation_freq: int | None = Field(None, gt=0)
    validation_steps: int | None = Field(None, gt=0)
    validation_batch_size: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _not_here(cls, value: Any) -> Any:
        if isinstance(value, dict):
            moved = {"validation_split": "data.validation_split", "validation_data": "data.validation_split",
                     "verbose": "the workers' logs (tuner-service trials NAME shows every epoch)",
                     "x": "data.source", "y": "data.source", "sample_weight": "data.source",
                     "initial_epoch": "checkpoints: true (a re-queued trial resumes from its last epoch)"}
            for key, where in moved.items():
                if key in value:
                    raise ValueError(f"{key} is not set here; the service sets it from {where}")
        return value

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, v: str | None) -> str | None:
        if v is not None and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("per-trial TensorBoard logs need the tensorboard package: pip install tensorboard")
        return v


class SpeedSpec(_Strict):
    """How trials run fast without changing what they compute (``benchmarks/RESULTS.md`` has the
    figures behind each default); each can be turned off."""

    steps_per_execution: Literal["auto"] | int = Field(
        "auto", description="batches per compiled call; auto: a whole epoch, when nothing watches single "
                            "batches (no HyperModel.fit of yours, no batch-level callback); 1: Keras' default")
    reuse_tensors: bool = Field(True, description="convert the data to tensors once per worker, not once per fit")
    onednn: bool | None = Field(None, description="TensorFlow's oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS) in the "
                                                  "service's processes; None: the service's default")

    @field_validator("steps_per_execution")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"steps_per_execution {v} must be 1 or more (1 turns it off), or auto")
        return v


class BoundSpec(_Strict):
    """A constraint on one metric: ``{max: 100000}``, ``{min: 0.9}`` or both."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> BoundSpec:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min:, max: or both, e.g. {max: 100000}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; nothing could meet it")
        return self

    def violations(self, value: float) -> dict[str, float]:
        """Optuna's constraint values for ``value``: feasible when each is <= 0."""
        out = {}
        if self.max is not None:
            out["max"] = value - self.max
        if self.min is not None:
            out["min"] = self.min - value
        return out


class WarmStartSpec(_Strict):
    """Start with the best configurations of an earlier study (``warm_start``)."""

    study: str
    top_k: int = Field(5, ge=1, le=1000)
    storage: str | None = Field(None, description="the earlier study's storage URL; default: this study's")


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    model: str
    data: DataSpec = Field(default_factory=DataSpec)
    #: The first (or only) objective; a list in the study file makes the rest ``more_objectives``.
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    more_objectives: list[ObjectiveSpec] = Field(default_factory=list)
    constraints: dict[str, BoundSpec] = Field(default_factory=dict)
    warm_start: WarmStartSpec | None = None
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="configurations to try first")
    tuner: TunerSpec = Field(default_factory=TunerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    fit: FitSpec = Field(default_factory=FitSpec)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    seed: int = Field(42, ge=0, lt=2**32)
    priority: int = 0
    checkpoints: bool = False

    @model_validator(mode="before")
    @classmethod
    def _objective_list(cls, data: Any) -> Any:
        # `objective: [val_accuracy, {name: params, direction: minimize}]`: several objectives.
        if isinstance(data, dict) and isinstance(data.get("objective"), list):
            objectives = data["objective"]
            if not objectives:
                raise ValueError("objective: is an empty list; name at least one metric")
            data = {**data, "objective": objectives[0], "more_objectives": list(objectives[1:])}
        return data

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_str(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("more_objectives", mode="before")
    @classmethod
    def _objectives_str(cls, v: Any) -> Any:
        return [{"name": o} if isinstance(o, str) else o for o in v] if isinstance(v, list) else v

    @field_validator("enqueue")
    @classmethod
    def _enqueue_values(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for point in v:
            for key, value in point.items():
                if not isinstance(value, (type(None), bool, int, float, str)):
                    raise ValueError(f"enqueue: {key}={value!r} is not a number, string, bool or null")
        return v

    @model_validator(mode="after")
    def _known_configurations(self) -> StudySpec:
        if self.tuner.name == "grid" and (self.enqueue or self.warm_start):
            raise ValueError("enqueue:/warm_start: do not apply to tuner grid (it runs every grid point once); "
                             "drop them, or use another tuner")
        return self

    @model_validator(mode="after")
    def _objectives(self) -> StudySpec:
        names = [o.name for o in self.objectives]
        if len(set(names)) < len(names):
            raise ValueError(f"objective: {names} names a metric twice; list each once")
        limit = _tuner_objective_limit(self.tuner.name)
        if limit is not None and len(names) > limit:
            raise ValueError(f"tuner {self.tuner.name!r} optimises one objective, this study has {len(names)} "
                             f"({', '.join(names)}); use tuner: tpe or nsga2 for a Pareto front, or keep one "
                             "objective and express the others as constraints:")
        return self

    @model_validator(mode="after")
    def _grid_fit(self) -> StudySpec:
        if self.tuner.name == "grid":
            used = [k for k in ("callbacks", "class_weight", "steps_per_epoch", "validation_freq", "validation_steps",
                                "validation_batch_size") if getattr(self.fit, k)]
            if used:
                raise ValueError(f"fit.{used[0]} is not used by tuner grid (GridSearchCV cross-validates the "
                                 "SciKeras estimator); drop it, or use a keras-tuner style study (tuner: tpe)")
        return self

    @model_validator(mode="after")
    def _epochs(self) -> StudySpec:
        if self.fit.epochs and self.budget.max_epochs and self.fit.epochs > self.budget.max_epochs:
            raise ValueError(
                f"fit.epochs={self.fit.epochs} exceeds budget.max_epochs={self.budget.max_epochs}; "
                "lower one or raise the other"
            )
        return self

    @property
    def epochs(self) -> int:
        """Epochs one trial trains for: fit.epochs, else budget.max_epochs, else 10."""
        return self.fit.epochs or self.budget.max_epochs or 10

    @property
    def maximize(self) -> bool:
        return self.objective.direction == "maximize"

    @property
    def objectives(self) -> list[ObjectiveSpec]:
        return [self.objective, *self.more_objectives]

    @property
    def directions(self) -> list[str]:
        return [str(o.direction) for o in self.objectives]

    @property
    def builtin_metrics(self) -> set[str]:
        """The runner's own metrics this study needs (for objectives or constraints)."""
        return {n for n in [o.name for o in self.objectives] + list(self.constraints) if n in BUILTIN_METRICS}

    def to_stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _tuner_objective_limit(name: str) -> int | None:
    from tuner_service import tuners

    return tuners.get(name).max_objectives


# --------------------------------------------------------------------------- model refs


def split_model_ref(ref: str) -> tuple[str, str]:
    if ":" not in ref:
        raise BadInput(
            f"model reference {ref!r} has no attribute; write path/to/file.py:build_model "
            "or package.module:MyHyperModel"
        )
    target, attr = ref.rsplit(":", 1)
    if not attr.isidentifier():
        raise BadInput(f"model reference {ref!r}: {attr!r} is not a Python name")
    return target, attr


def model_source_path(ref: str) -> Path:
    """The source file a model reference points at (without importing it)."""
    target, _ = split_model_ref(ref)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise BadInput(f"model file {target!r} not found; check the model: field (paths are relative to the study file)")
        return path
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise BadInput(f"model module {target!r} not found; use path/to/file.py:name or an importable module")
    return Path(found.origin)


def check_model_ref(ref: str) -> Path:
    """Fail early, without importing user code, when the referenced name is not defined."""
    path = model_source_path(ref)
    _, attr = split_model_ref(ref)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise BadInput(f"model file {str(path)!r} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
    if attr not in names:
        defined = ", ".join(n for n in names if not n.startswith("_")) or "nothing"
        raise BadInput(f"model reference {ref!r} not found: {path.name} defines {defined}")
    return path


def code_hash(ref: str) -> str:
    return hashlib.sha256(model_source_path(ref).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- loading

#: CLI flag -> dotted spec field.
FLAG_FIELDS = {
    "name": "name",
    "tuner": "tuner",
    "max_trials": "budget.max_trials",
    "max_epochs": "budget.max_epochs",
    "epochs": "fit.epochs",
    "batch_size": "fit.batch_size",
    "seed": "seed",
    "timeout": "budget.timeout",
    "tensorboard": "fit.tensorboard",
}


def parse_set_option(item: str) -> tuple[str, Any]:
    """``fit.batch_size=64`` -> ("fit.batch_size", 64) (the value is parsed as YAML)."""
    if "=" not in item:
        raise BadInput(f"--set {item!r} is not KEY=VALUE; write e.g. --set fit.batch_size=64")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if isinstance(child, str) and key == "tuner":
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise BadInput(f"cannot set {dotted!r}: {key!r} is not a mapping in the spec")
            node[key] = child
            node = child
        if leaf == "tuner" and not parents and isinstance(node.get("tuner"), dict):
            old = node["tuner"]
            # Another tuner's options do not apply to this one; the same tuner keeps them.
            node["tuner"] = {**old, "name": value} if old.get("name") == value else {"name": value}
        else:
            node[leaf] = value
    return raw


def load_spec(path: str | Path | None, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read, override and validate a study file; every error is one ``BadInput`` line."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"study file {str(path)!r} not found; pass the path of a YAML study file (see studies/)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise BadInput(f"study file {str(path)!r} is not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise BadInput(f"study file {str(path)!r} must be a mapping of fields (name:, model:, ...)")
        raw = loaded
        base = path.parent
    raw = apply_overrides(raw, overrides or {})
    if isinstance(raw.get("model"), str):
        raw["model"] = _resolve_model_path(raw["model"], base)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        source = data["source"]
        if source.startswith("npz:"):
            data["source"] = "npz:" + _resolve_path(source[4:], base)
        elif source.count(":") == 1 and source.split(":")[0].endswith(".py"):
            data["source"] = _resolve_model_path(source, base)
    fit = raw.get("fit")
    if isinstance(fit, dict) and isinstance(fit.get("callbacks"), list):
        fit["callbacks"] = resolve_refs(fit["callbacks"], lambda ref: _resolve_model_path(ref, base))
    spec = validate_spec(raw, source=str(path) if path else "spec")
    check_model_ref(spec.model)
    return spec


def _resolve_path(path: str, base: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def _resolve_model_path(ref: str, base: Path) -> str:
    if ":" not in ref:
        return ref
    target, attr = ref.rsplit(":", 1)
    if not target.endswith(".py"):
        return ref
    p = Path(target)
    if not p.is_absolute():
        p = base / p
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        p = p.resolve()
    return f"{p}:{attr}"


def validate_spec(raw: dict[str, Any], source: str = "spec") -> StudySpec:
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(f"{source}: {format_validation_error(exc, raw)}") from None
    except BadInput as exc:
        raise BadInput(f"{source}: {exc}") from None


def format_validation_error(exc: ValidationError, raw: Any = None) -> str:
    """pydantic's error list -> one line naming the field, the bad value and the fix."""
    err = exc.errors()[0]
    # Union members appear in the location as their type ("dict[int,float]"): not a field name.
    loc = ".".join(str(p) for p in err["loc"] if p not in ("options",) and "[" not in str(p)) or ""
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        parent = _model_at(StudySpec, [p for p in err["loc"][:-1]])
        valid = ", ".join(parent.model_fields) if parent else ""
        msg = f"unknown field {err['loc'][-1]!r}" + (f"; valid fields here: {valid}" if valid else "")
        loc = ".".join(str(p) for p in err["loc"][:-1]) or ""
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_pattern_mismatch" and err["loc"][-1] == "name":
        msg = (f"name {err.get('input')!r} is not valid; use letters, digits, '_', '-', '.' "
               "(up to 128 characters)")
    else:
        msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
        if "input" in err and err["type"] != "value_error" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
    more = len(exc.errors()) - 1
    return (f"{loc}: {msg}" if loc else msg) + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _model_at(model: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        ann = field.annotation
        candidates = getattr(ann, "__args__", (ann,))
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model
