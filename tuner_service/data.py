"""Data sources by URI and their deterministic train/validation/test split.

- ``sklearn:digits`` (default; 1,797 8x8 images scaled to [0, 1], shipped with scikit-learn),
  ``sklearn:diabetes``, ``sklearn:iris``, ``sklearn:wine``, ``sklearn:breast_cancer``;
- ``keras:mnist``, ``keras:fashion_mnist``, ``keras:cifar10`` through Keras' own loaders and
  cache (``~/.keras/datasets``); images scaled to [0, 1];
- ``npz:PATH`` holding ``x``/``y`` (or ``x_train``/``y_train`` and ``x_test``/``y_test``);
- ``path/to/file.py:load_data``: a function returning ``(x, y)`` or
  ``((x_train, y_train), (x_test, y_test))``.

When the source has no test set of its own, ``test_split`` of it is held out first, then
``validation_split`` of the rest; both splits are stratified for classification and seeded by
the study's seed, so every worker on every machine sees the same split.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner_service.errors import BadInput

if TYPE_CHECKING:
    from tuner_service.spec import DataSpec

SKLEARN_SOURCES = ("digits", "diabetes", "iris", "wine", "breast_cancer")
KERAS_SOURCES = {
    "mnist": "mnist.npz",
    "fashion_mnist": "fashion-mnist",
    "cifar10": "cifar-10-batches-py",
}


@dataclass
class Dataset:
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any
    task: str  # "classification" | "regression"
    source: str
    hash: str = field(default="")

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": _len(self.x_train), "validation": _len(self.x_val), "test": _len(self.x_test)}


def _len(x: Any) -> int:
    if isinstance(x, (list, tuple)):
        return len(x[0]) if x else 0
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


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


def _load_file(source: str) -> Any:
    file, attr = source.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(f"_tuner_data_{Path(file).stem}", file)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot import data file {file!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, attr, None)
    if fn is None:
        raise BadInput(f"data function {attr!r} not found in {file}")
    return fn()


def _infer_task(y: Any) -> str:
    y = np.asarray(y)
    if y.dtype.kind in "iub" or (y.ndim == 2 and y.shape[1] > 1):
        return "classification"
    return "regression"


def load(spec: DataSpec, seed: int) -> Dataset:
    """Load the source and split it; the same (spec, seed) gives the same arrays everywhere."""
    from sklearn.model_selection import train_test_split

    source = spec.source
    scheme, _, rest = source.partition(":")
    test: tuple[Any, Any] | None = None
    if scheme == "sklearn":
        x, y = _load_sklearn(rest)
    elif scheme == "keras":
        (x, y), test = _load_keras(rest)
    elif scheme == "npz":
        with np.load(rest) as f:
            if "x" in f:
                x, y = f["x"], f["y"]
            else:
                x, y = f["x_train"], f["y_train"]
                test = (f["x_test"], f["y_test"])
    else:
        out = _load_file(source)
        if len(out) == 2 and isinstance(out[0], tuple):
            (x, y), test = out
        else:
            x, y = out
    task = _infer_task(y)
    strat = lambda labels: labels if task == "classification" and np.asarray(labels).ndim == 1 else None  # noqa: E731
    if test is None:
        if spec.test_split > 0:
            x, x_test, y, y_test = train_test_split(x, y, test_size=spec.test_split, random_state=seed, stratify=strat(y))
        else:
            x_test, y_test = x[:0], y[:0]
        test = (x_test, y_test)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=spec.validation_split, random_state=seed, stratify=strat(y)
    )
    data = Dataset(x_train, y_train, x_val, y_val, test[0], test[1], task, source)
    data.hash = _hash(data)
    return data


def _hash(data: Dataset) -> str:
    h = hashlib.sha256()
    for arr in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        for a in arr if isinstance(arr, (list, tuple)) else [arr]:
            a = np.ascontiguousarray(a)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]
