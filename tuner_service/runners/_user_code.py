"""Users' model code: import a ``file.py:name`` or ``package.module:name`` reference, and
adapt what it names (``build_model(hp)``, a ``HyperModel`` class or instance) to build/fit."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from tuner_service.errors import BadInput, error_line


def import_user_object(ref: str, what: str = "model") -> Any:
    """Import ``path/to/file.py:name`` or ``package.module:name``.

    A file is imported once per process under a private module name derived from its path
    (``_tuner_user_<stem>_<digest>``: the same in every process, and never shadowing a module
    of the user's), with its directory on ``sys.path`` so it may import its siblings. Keras
    records that module name when it saves a custom class; loading such a model back needs the
    class itself, which :func:`tuner_service.load_model` provides by importing the file again.
    ``what`` ("model", "data", "callback") names the reference in error messages."""
    import importlib

    from tuner_service.spec import split_model_ref

    target, attr = split_model_ref(ref)
    if target.endswith(".py"):
        module = import_user_file(target, what)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise BadInput(f"importing {what} module {target!r} failed: {error_line(exc)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        defined = ", ".join(sorted(n for n in vars(module) if not n.startswith("_"))) or "nothing"
        raise BadInput(f"{what} reference {ref!r} not found: {target} has no {attr!r} (it defines {defined})") from None


def import_user_file(target: str | Path, what: str = "model", *, search_path: str | Path | None = None) -> ModuleType:
    """Import a user's ``.py`` file (once per process); ``search_path`` is put on ``sys.path``
    instead of the file's own directory (for a copy of a file whose siblings stayed behind)."""
    import hashlib
    import importlib.util
    import sys

    path = Path(target).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    mod_name = f"_tuner_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    module = sys.modules.get(mod_name)
    if module is not None:
        return module
    if not path.is_file():
        raise BadInput(f"{what} file {str(target)!r} not found; check the path (relative to the study file)")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot import {what} file {str(target)!r}; it must be a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # The user's file may import siblings (from my_layers import ...).
    directory = str(Path(search_path).resolve() if search_path is not None else path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise BadInput(f"importing {what} file {str(target)!r} failed: {error_line(exc)}") from exc
    return module


def check_code_ref(ref: str, what: str) -> None:
    """``file.py:name`` names something the file defines (read, not imported); a
    ``package.module:name`` reference is checked when it is imported."""
    target, _, attr = ref.rpartition(":")
    if not attr.isidentifier() or not target:
        raise ValueError(f"{what} reference {ref!r} is not path/to/file.py:Name")
    if not target.endswith(".py"):
        return
    path = Path(target)
    if not path.is_file():
        raise ValueError(f"{what} file {target!r} not found (paths are relative to the study file)")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{what} file {target!r} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if attr not in names:
        defined = ", ".join(sorted(n for n in names if not n.startswith("_"))) or "nothing"
        raise ValueError(f"{what} {attr!r} not found: {path.name} defines {defined}")


class _FunctionHyperModel:
    """Adapts ``build_model(hp)`` to the HyperModel interface."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def build(self, hp: Any) -> Any:
        return self.fn(hp)

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        return model.fit(*args, **kwargs)


def as_hypermodel(obj: Any) -> Any:
    """A function, a HyperModel subclass or a HyperModel instance -> an object with build/fit."""
    import inspect

    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise BadInput(f"cannot instantiate {obj.__name__}() without arguments ({exc}); "
                           "reference an instance or a factory function instead") from None
    if hasattr(obj, "build") and callable(obj.build):
        if not hasattr(obj, "fit"):
            obj.fit = lambda hp, model, *a, **kw: model.fit(*a, **kw)
        return obj
    if callable(obj):
        return _FunctionHyperModel(obj)
    raise BadInput(f"model reference points at a {type(obj).__name__}; it must be build_model(hp) or a HyperModel")
