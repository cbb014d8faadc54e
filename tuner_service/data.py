"""Data sources by URI and their deterministic train/validation/test split.

- ``sklearn:digits`` (default; 1,797 8x8 images scaled to [0, 1], shipped with scikit-learn),
  ``sklearn:diabetes``, ``sklearn:iris``, ``sklearn:wine``, ``sklearn:breast_cancer``;
- ``keras:mnist``, ``keras:fashion_mnist``, ``keras:cifar10`` through Keras' own loaders and
  cache (``~/.keras/datasets``); images scaled to [0, 1];
- ``npz:PATH`` holding ``x``/``y`` (optionally with ``x_test``/``y_test``), or
  ``x_train``/``y_train``/``x_test``/``y_test``; several inputs or outputs as ``x_<input>``
  and ``y_<output>`` arrays (``x_train_<input>``... in the second layout), which become dicts
  keyed by the input and output names;
- ``path/to/file.py:load_data``: a function returning ``(x, y)``,
  ``((x_train, y_train), (x_test, y_test))`` or a dict with keys ``x``, ``y`` and optionally
  ``x_test``, ``y_test``.

Inputs (``x``) may be one array, a dict of arrays keyed by the model's input names, or a list
or tuple of arrays (in the model's input order); targets (``y``) likewise one array, or a
dict/list/tuple for several outputs. Every array holds one row per sample; a split indexes
every array with the same rows.

When the source has no test set of its own, ``test_split`` of it is held out first, then
``validation_split`` of the rest; both splits are seeded by the study's seed (so every worker
on every machine sees the same split) and stratified when the task is classification with a
single one-dimensional target (``data.stratify: false`` turns that off).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner_service.errors import BadInput, error_line

if TYPE_CHECKING:
    from tuner_service.spec import DataSpec

SKLEARN_SOURCES = ("digits", "diabetes", "iris", "wine", "breast_cancer")
KERAS_SOURCES = {
    "mnist": "mnist.npz",
    "fashion_mnist": "fashion-mnist",
    "cifar10": "cifar-10-batches-py",
}
_FORMS = ("(x, y), ((x_train, y_train), (x_test, y_test)) or {'x': ..., 'y': ..., 'x_test': ..., 'y_test': ...}")


@dataclass
class Dataset:
    """The three splits. ``x_*`` are an array, a dict or a list of arrays (several inputs),
    ``y_*`` an array, a dict or a list of arrays (several outputs)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    task: str  # "classification" | "regression" (of the first target when there are several)
    source: str
    hash: str = field(default="")

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": _len(self.x_train), "validation": _len(self.x_val), "test": _len(self.x_test)}


# ---------------------------------------------------------------------------- structures


def is_structure(x: Any) -> bool:
    """A dict, list or tuple of arrays (several inputs or outputs), as opposed to one array."""
    if isinstance(x, Mapping):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_array_like(a) for a in x)


def _is_array_like(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "__len__") and len(getattr(a, "shape", ())) >= 1


def leaves(x: Any) -> list[tuple[str, Any]]:
    """``(label, array)`` for every array of a structure, in a fixed order (dict: by key)."""
    if isinstance(x, Mapping):
        return [(repr(str(k)), x[k]) for k in sorted(x, key=str)]
    if is_structure(x):
        return [(str(i), a) for i, a in enumerate(x)]
    return [("", x)]


def tree_map(fn: Callable[[Any], Any], x: Any) -> Any:
    """Apply ``fn`` to every array of ``x``, keeping its structure."""
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    if is_structure(x):
        return type(x)(fn(a) for a in x)
    return fn(x)


def tree_concat(a: Any, b: Any) -> Any:
    """Rows of ``a`` then rows of ``b`` (two splits of the same structure)."""
    if isinstance(a, Mapping):
        return {k: np.concatenate([a[k], b[k]]) for k in a}
    if is_structure(a):
        return type(a)(np.concatenate([x, y]) for x, y in zip(a, b, strict=True))
    return np.concatenate([a, b])


def _len(x: Any) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    if isinstance(x, (list, tuple)):
        return len(x[0]) if x else 0
    return len(x)


def _normalise(x: Any, role: str) -> Any:
    """Arrays as numpy arrays; a tuple of arrays as a list (Keras reads a list as several
    inputs or outputs); anything that is not one of the accepted forms is refused."""
    if isinstance(x, Mapping):
        if not x:
            raise BadInput(f"data: the {role} dict is empty; give one array per model {role}")
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise BadInput(f"data: {role} dict key {bad[0]!r} is not a string; key the arrays by the model's "
                           f"{role} names")
        return {k: _array(v, f"{role} {k!r}") for k, v in x.items()}
    if is_structure(x):
        return [_array(a, f"{role} {i}") for i, a in enumerate(x)]
    return _array(x, role)


def _array(a: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise BadInput(f"data: {what} is not an array ({error_line(exc)}); return numpy arrays") from None
    if arr.ndim == 0:
        raise BadInput(f"data: {what} is a scalar ({type(a).__name__}), not an array with one row per sample")
    if arr.dtype == object:
        raise BadInput(f"data: {what} is not a numeric array (dtype object); return numeric numpy arrays "
                       "(a dict or list of arrays for several inputs)")
    return arr


def _check_counts(x: Any, y: Any, where: str = "") -> int:
    """Every input and target has the same number of rows; returns it."""
    labelled = [(f"input {label}".strip(), a) for label, a in leaves(x)]
    labelled += [(f"target {label}".strip(), a) for label, a in leaves(y)]
    first_label, first = labelled[0]
    n = len(first)
    for label, a in labelled[1:]:
        if len(a) != n:
            raise BadInput(f"data{where}: {label} has {len(a)} samples but {first_label} has {n}; every input and "
                           "target needs one row per sample")
    if n == 0:
        raise BadInput(f"data{where}: there are no samples; the data source returned empty arrays")
    return n


def _check_same_structure(train: Any, test: Any, role: str) -> None:
    keys = lambda s: sorted(s, key=str) if isinstance(s, Mapping) else len(s) if is_structure(s) else None  # noqa: E731
    if keys(train) != keys(test):
        raise BadInput(f"data: the test {role}s ({_describe(test)}) do not match the training {role}s "
                       f"({_describe(train)}); give both splits the same {role}s")


def _describe(x: Any) -> str:
    if isinstance(x, Mapping):
        return "keys " + ", ".join(map(str, x))
    if is_structure(x):
        return f"a list of {len(x)} arrays"
    return "one array"


# ---------------------------------------------------------------------------- sources


def check_source(source: str) -> None:
    """Validate a data URI without loading anything."""
    scheme, _, rest = source.partition(":")
    if scheme == "sklearn":
        if rest not in SKLEARN_SOURCES:
            raise ValueError(f"unknown scikit-learn dataset {rest!r}; use one of: {', '.join(SKLEARN_SOURCES)}")
    elif scheme == "keras":
        if rest not in KERAS_SOURCES:
            raise ValueError(f"unknown Keras dataset {rest!r}; use one of: {', '.join(KERAS_SOURCES)}")
    elif scheme == "npz":
        if not Path(rest).is_file():
            raise ValueError(f"npz file {rest!r} not found; give the path of an .npz with arrays x and y")
    elif source.count(":") == 1 and scheme.endswith(".py"):
        if not Path(scheme).is_file():
            raise ValueError(f"data file {scheme!r} not found; write data: {{source: path/to/file.py:load_data}}")
        from tuner_service.runners._user_code import check_code_ref

        check_code_ref(source, "data function")
    else:
        raise ValueError(
            f"data source {source!r} is not understood; use sklearn:digits, keras:mnist, npz:PATH "
            "or path/to/file.py:load_data"
        )


def _load_sklearn(name: str) -> tuple[Any, Any]:
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        return (bunch.images / 16.0).astype("float32"), bunch.target.astype("int64")
    bunch = getattr(datasets, f"load_{name}")()
    x = bunch.data.astype("float32")
    y = bunch.target
    y = y.astype("float32") if name == "diabetes" else y.astype("int64")
    return x, y


def _load_keras(name: str) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    import keras

    loader = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # network errors come in many types (URLError, OSError, Exception)
        cache = Path(keras.config.keras_home() if hasattr(keras.config, "keras_home") else "~/.keras") / "datasets"
        raise BadInput(
            f"cannot load keras:{name} ({type(exc).__name__}); Keras downloads it on first use: "
            f"put {KERAS_SOURCES[name]} in {cache.expanduser()} or run once with internet access"
        ) from None
    scale = lambda a: (a.astype("float32") / 255.0)  # noqa: E731
    return (scale(x_train), y_train.reshape(-1).astype("int64")), (scale(x_test), y_test.reshape(-1).astype("int64"))


_NPZ_HELP = ("it needs arrays x and y (x_<input>/y_<output> for several inputs/outputs; optionally x_test, y_test), "
             "or x_train, y_train, x_test, y_test")


def _load_npz(path: str) -> tuple[Any, Any, tuple[Any, Any] | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise BadInput(f"npz file {path!r} cannot be read ({error_line(exc)}); save it with numpy.savez") from None
    names = ", ".join(sorted(arrays)) or "none"

    def gather(prefix: str, skip: str | None = None) -> Any:
        if prefix in arrays:
            if any(k.startswith(prefix + "_") and not (skip and k.startswith(skip)) for k in arrays):
                raise BadInput(f"npz file {path!r} has both {prefix} and {prefix}_* arrays (it has {names}); "
                               f"use {prefix} for one array or {prefix}_<name> for several")
            return arrays[prefix]
        found = {k[len(prefix) + 1:]: v for k, v in arrays.items()
                 if k.startswith(prefix + "_") and not (skip and k.startswith(skip))}
        if not found:
            raise BadInput(f"npz file {path!r} has no {prefix} array (it has {names}); {_NPZ_HELP}")
        return found

    if any(k == "x_train" or k.startswith("x_train_") for k in arrays):
        return gather("x_train"), gather("y_train"), (gather("x_test"), gather("y_test"))
    x, y = gather("x", skip="x_test"), gather("y", skip="y_test")
    has_test = any(k == "x_test" or k.startswith("x_test_") for k in arrays)
    return x, y, ((gather("x_test"), gather("y_test")) if has_test else None)


def _load_file(source: str) -> tuple[Any, Any, tuple[Any, Any] | None]:
    from tuner_service.runners._user_code import import_user_object

    file, attr = source.rsplit(":", 1)
    fn = import_user_object(source, what="data")
    if not callable(fn):
        raise BadInput(f"data reference {source!r} is a {type(fn).__name__}, not a function; "
                       f"write def {attr}(): return x, y")
    try:
        out = fn()
    except Exception as exc:
        raise BadInput(f"data function {attr}() in {file} raised {error_line(exc)}; fix it (call it alone to see "
                       "the traceback)") from None
    return _unpack(out, f"{attr}() in {file}")


def _unpack(out: Any, what: str) -> tuple[Any, Any, tuple[Any, Any] | None]:
    """A loader's return value -> (x, y, test or None), in one of the documented forms."""
    if isinstance(out, Mapping):
        unknown = sorted(set(map(str, out)) - {"x", "y", "x_test", "y_test"})
        if unknown or "x" not in out or "y" not in out:
            problem = f"unknown key {unknown[0]!r}" if unknown else "no 'x' or no 'y'"
            raise BadInput(f"data: {what} returned a dict with {problem}; return {_FORMS}")
        if ("x_test" in out) != ("y_test" in out):
            raise BadInput(f"data: {what} returned only one of x_test and y_test; return both or neither")
        test = (out["x_test"], out["y_test"]) if "x_test" in out else None
        return out["x"], out["y"], test
    if not isinstance(out, (list, tuple)) or len(out) != 2:
        got = f"a {type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (list, tuple)) else "")
        raise BadInput(f"data: {what} returned {got}; return {_FORMS}")
    a, b = out
    if _is_pair(a) and _is_pair(b) and _as_split(a) and _as_split(b):
        # ((x_train, y_train), (x_test, y_test)), unless it reads as equally well as (inputs, outputs)
        # of two inputs and two outputs: then the counts and shapes cannot tell, and we ask.
        same_kind = _row_shapes(a[0]) == _row_shapes(b[0]) and _row_shapes(a[1]) == _row_shapes(b[1])
        one_count = len({_len(v) for v in (a[0], a[1], b[0], b[1])}) == 1
        if same_kind and not one_count:
            return a[0], a[1], (b[0], b[1])
        if same_kind and one_count:
            raise BadInput(f"data: {what} returned a pair of pairs that reads both as ((x_train, y_train), "
                           "(x_test, y_test)) and as two inputs and two outputs; return a dict "
                           "{'x': ..., 'y': ..., 'x_test': ..., 'y_test': ...} instead")
    return a, b, None


def _row_shapes(x: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(label, tuple(np.shape(a)[1:])) for label, a in leaves(x)]


def _is_pair(t: Any) -> bool:
    return isinstance(t, (list, tuple)) and len(t) == 2


def _as_split(t: Any) -> bool:
    """``(x, y)`` with as many rows in x as in y."""
    try:
        return _len(t[0]) == _len(t[1])
    except TypeError:
        return False


def _infer_task(y: Any) -> str:
    y = np.asarray(y)
    if y.dtype.kind in "iub" or (y.ndim == 2 and y.shape[1] > 1):
        return "classification"
    return "regression"


def single_target(y: Any) -> Any | None:
    """The one target array, or None when there are several outputs."""
    items = leaves(y)
    return items[0][1] if len(items) == 1 else None


# ---------------------------------------------------------------------------- load + split


def load(spec: DataSpec, seed: int) -> Dataset:
    """Load the source and split it; the same (spec, seed) gives the same arrays everywhere."""
    source = spec.source
    scheme, _, rest = source.partition(":")
    test: tuple[Any, Any] | None = None
    if scheme == "sklearn":
        x, y = _load_sklearn(rest)
    elif scheme == "keras":
        (x, y), test = _load_keras(rest)
    elif scheme == "npz":
        x, y, test = _load_npz(rest)
    else:
        x, y, test = _load_file(source)
    x, y = _normalise(x, "input"), _normalise(y, "target")
    n = _check_counts(x, y)
    if test is not None:
        x_test, y_test = _normalise(test[0], "input"), _normalise(test[1], "target")
        _check_same_structure(x, x_test, "input")
        _check_same_structure(y, y_test, "target")
        _check_counts(x_test, y_test, " (test split)")
        test = (x_test, y_test)
    target = single_target(y)
    task = _infer_task(target if target is not None else leaves(y)[0][1])
    stratify = spec.stratify and task == "classification" and target is not None and np.asarray(target).ndim == 1

    rows = np.arange(n)
    if test is None:
        if spec.test_split > 0:
            rows, test_rows = _split(rows, spec.test_split, seed, target if stratify else None, "test_split")
        else:
            test_rows = rows[:0]
        test = (_take(x, test_rows), _take(y, test_rows))
    train_rows, val_rows = _split(rows, spec.validation_split, seed, target[rows] if stratify else None,
                                  "validation_split")
    data = Dataset(_take(x, train_rows), _take(y, train_rows), _take(x, val_rows), _take(y, val_rows),
                   test[0], test[1], task, source)
    data.hash = _hash(data)
    return data


def _split(rows: np.ndarray, size: float, seed: int, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``train_test_split`` of row numbers: the rows it gives for the arrays
    themselves (the same permutation), applied to every input and target alike."""
    from sklearn.model_selection import train_test_split

    try:
        first, second = train_test_split(rows, test_size=size, random_state=seed, stratify=labels)
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if labels is None:
            raise BadInput(f"data.{what}={size} cannot split {len(rows)} samples ({reason}); change data.{what}") from None
        values, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            rare = values[counts.argmin()].item()
            reason = f"class {rare!r} has {counts.min()} sample; a stratified split needs 2 or more of every class"
        raise BadInput(f"data.{what}: cannot stratify the labels ({reason}); give every class more samples, or set "
                       "data.stratify: false (or use float targets for a regression)") from None
    return np.asarray(first), np.asarray(second)


def _take(x: Any, rows: np.ndarray) -> Any:
    return tree_map(lambda a: a[rows], x)


def _hash(data: Dataset) -> str:
    h = hashlib.sha256()
    for part in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        for label, a in leaves(part):
            if label and isinstance(part, Mapping):
                h.update(label.encode())
            a = np.ascontiguousarray(a)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def input_signature(x: Any) -> Any:
    """Shapes and dtypes of one sample of every input (``{"shape": [None, ...], "dtype": ...}``),
    in ``x``'s structure: enough to build a model again without the data."""
    return tree_map(lambda a: {"shape": [None, *map(int, np.shape(a)[1:])], "dtype": str(np.asarray(a).dtype)}, x)



def check_model_io(model: Any, x: Any, y: Any) -> None:
    """Inputs and targets keyed (or counted) as the model's inputs and outputs: a dict of inputs
    whose keys are not the model's input names, or a list of the wrong length, is one
    ``BadInput`` line. Models that do not declare their inputs (subclasses) are not checked."""
    for role, data, struct in (("input", x, _model_struct(model, "input")),
                               ("output", y, _model_struct(model, "output"))):
        if struct is None:
            continue
        names = _struct_names(struct, model, role)
        what = "inputs" if role == "input" else "targets"
        fix = ("key load_data's inputs by the model's input names (keras.Input(name=...))" if role == "input"
               else "key the targets by the model's output layer names")
        if isinstance(data, Mapping):
            missing = [n for n in names if n not in data] if role == "input" else []
            unknown = [str(k) for k in data if k not in names]
            if missing or unknown:
                problem = (f"has no {missing[0]!r}" if missing else f"has {unknown[0]!r}, which is not one of them")
                raise BadInput(f"data: the {what} are keyed {', '.join(map(str, data))} but the model's {role}s are "
                               f"named {', '.join(names)} (the dict {problem}); {fix}")
        elif len(names) != (len(data) if is_structure(data) else 1):
            given = f"{len(data)} {what}" if is_structure(data) else f"one {what[:-1]} array"
            raise BadInput(f"data: there are {given} but the model has {len(names)} {role}s ({', '.join(names)}); "
                           f"give one array per {role}, as a dict keyed by those names or a list in that order")


def _model_struct(model: Any, role: str) -> Any:
    try:
        struct = getattr(model, role)  # Functional/Sequential: the structure given to keras.Model
    except Exception:  # a subclassed model has none (or has not been called yet)
        return None
    leaves_ = list(struct.values()) if isinstance(struct, Mapping) else struct if isinstance(struct, (list, tuple)) \
        else [struct]
    return struct if leaves_ and all(hasattr(t, "name") and hasattr(t, "shape") for t in leaves_) else None


def _struct_names(struct: Any, model: Any, role: str) -> list[str]:
    if isinstance(struct, Mapping):
        return [str(k) for k in struct]
    tensors = list(struct) if isinstance(struct, (list, tuple)) else [struct]
    if role == "output":
        names = getattr(model, "output_names", None)
        if isinstance(names, (list, tuple)) and len(names) == len(tensors):
            return [str(n) for n in names]
    return [str(t.name) for t in tensors]
