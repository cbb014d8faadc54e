"""Users' model code: import a ``file.py:name`` or ``package.module:name`` reference, and
adapt what it names (``build_model(hp)``, a ``HyperModel`` class or instance) to build/fit."""

from __future__ import annotations

from typing import Any

from tuner_service.errors import BadInput


def import_user_object(ref: str) -> Any:
    """Import ``path/to/file.py:name`` or ``package.module:name``."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from tuner_service.spec import split_model_ref

    target, attr = split_model_ref(ref)
    if target.endswith(".py"):
        path = Path(target).resolve()
        mod_name = f"_tuner_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise BadInput(f"cannot import model file {target!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            # The user's file may import siblings (from my_layers import ...).
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise BadInput(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BadInput(f"model reference {ref!r} not found: {target} has no {attr!r}") from None


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
