"""Grid search: GridSearchCV's search, one stored Optuna trial per grid point.

The points come from scikit-learn's ``ParameterGrid`` (sorted, deterministic) and are
enqueued in that order as WAITING trials, so N workers share them and each point runs once
(a point whose worker died is re-queued like any trial). A worker evaluates a point with
``sklearn.model_selection.cross_validate`` on a clone of the SciKeras estimator, with the
splitter ``check_cv`` gives and the scorer ``check_scoring`` gives: exactly what
``GridSearchCV`` does per candidate. The trial's value is the mean test score; its user attrs
hold what ``cv_results_`` holds for that candidate (fold scores, std, fit and score times)
and each fold's epoch curves.

SciKeras 0.13's estimators are wrapped to carry the scikit-learn tags they intend
(``tuners/_scikeras.py``): without them scikit-learn >= 1.6 treats ``KerasClassifier`` as no
classifier and GridSearchCV uses unstratified folds.

The CV data is the study's training data *and* its validation split (cross-validation
replaces the validation split); the test split stays held out for ``retrain``.
GridSearchCV's ``refit`` is left to ``tuner-service retrain`` (it refits the best point on the
same data and evaluates it on the test split).

The model may be a plain builder (``build_model()`` or ``build_model(units=...)``, grid keys
``model__units``, ``optimizer__learning_rate``, ``epochs``... as SciKeras routes them) or a
keras-tuner style ``build_model(hp)``: then grid keys that are hyperparameter names are fed
through a fixed ``hp``, and without a ``param_grid`` the grid is derived from the space
(``hp.Choice``, ``hp.Boolean``, stepped ``hp.Int``/``hp.Float``).
"""

from __future__ import annotations

import inspect
import math
import time
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service.errors import BadInput, TrialError, error_line
from tuner_service.runners import Outcome
from tuner_service.runners._env import configure_gpu, device_name
from tuner_service.runners._user_code import as_hypermodel, import_user_object
from tuner_service.tuners.grid import PRIMITIVES, GridOptions

if TYPE_CHECKING:
    import optuna

    from tuner_service.spec import StudySpec

# ---------------------------------------------------------------------------- estimator


def _takes_hp(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "hp"


def _task(spec: StudySpec, options: GridOptions, data: Any) -> str:
    if options.estimator != "auto":
        return options.estimator
    return data.task


def make_estimator(spec: StudySpec, data: Any, seed: int | None = None) -> tuple[Any, set[str]]:
    """The SciKeras estimator for the study's builder, and the names routed into ``hp``."""
    from tuner_service.runners._scikeras import KerasClassifier, KerasRegressor

    _refuse_several_arrays(data)
    options = GridOptions(**spec.tuner.options)
    obj = import_user_object(spec.model)
    hp_names: set[str] = set()
    if _takes_hp(obj) or (inspect.isclass(obj) or hasattr(obj, "build")):
        hypermodel = as_hypermodel(obj)
        hp_names = {hp.name for hp in _space(hypermodel)}

        def build(**kwargs: Any) -> Any:
            from tuner_service.hp import fixed

            return hypermodel.build(fixed({k: v for k, v in kwargs.items() if k in hp_names}))

        build.__name__ = getattr(obj, "__name__", "build_model")
        model: Any = build
    else:
        model = obj
    cls = KerasClassifier if _task(spec, options, data) == "classification" else KerasRegressor
    est = cls(model=model, epochs=spec.epochs, batch_size=spec.fit.batch_size, shuffle=spec.fit.shuffle,
              verbose=0, random_state=spec.seed if seed is None else seed)
    return est, hp_names


def _refuse_several_arrays(data: Any) -> None:
    """GridSearchCV splits the rows of one X and one y; SciKeras has no way to route a dict or
    list of inputs (or several targets) through it without a user-written transformer."""
    from tuner_service.data import is_structure, leaves

    for role, value in (("inputs", data.x_train), ("targets", data.y_train)):
        if is_structure(value):
            names = ", ".join(label for label, _ in leaves(value))
            raise BadInput(f"tuner grid (GridSearchCV through SciKeras) takes one input array and one target array; "
                           f"this data has {len(leaves(value))} {role} ({names}): use a keras-tuner style study "
                           "instead (tuner: tpe, random or bayesian, with hp.Choice for the values to try)")


def _space(hypermodel: Any) -> list[Any]:
    """The hyperparameters a keras-tuner builder registers on its default path."""
    from tuner_service.hp import TrialHyperParameters

    hp = TrialHyperParameters(None)
    try:
        hypermodel.build(hp)
    except Exception as exc:
        raise BadInput(f"build_model(hp) raised {type(exc).__name__}: {exc}") from None
    finally:
        import keras

        keras.backend.clear_session()
    return list(hp.space)


def _route(point: dict[str, Any], hp_names: set[str]) -> dict[str, Any]:
    return {(f"model__{k}" if k in hp_names else k): v for k, v in point.items()}


# ---------------------------------------------------------------------------- the grid


def points(spec: StudySpec, data: Any) -> tuple[list[dict[str, Any]], Any, set[str]]:
    """ParameterGrid's points (validated against the estimator), the estimator, hp names."""
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    from tuner_service.hp import grid_values

    options = GridOptions(**spec.tuner.options)
    est, hp_names = make_estimator(spec, data)
    grid = options.param_grid
    if grid is None:
        if not hp_names:
            raise BadInput("tuner grid needs a param_grid for a plain build_model(); "
                           "write tuner: {name: grid, param_grid: {epochs: [1, 2], batch_size: [32, 64]}}")
        try:
            grid = {hp.name: grid_values(hp) for hp in _space(as_hypermodel(import_user_object(spec.model)))}
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    try:
        pts = list(ParameterGrid(grid))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"param_grid: {exc}") from None
    for point in pts:
        for key, value in point.items():
            if not isinstance(value, PRIMITIVES):
                raise BadInput(f"param_grid value {value!r} for {key!r} is not a number, string, bool or null; "
                               "store the choice as a string and map it in build_model")
        try:
            clone(est).set_params(**_route(point, hp_names))
        except ValueError as exc:
            raise BadInput(f"param_grid: {str(exc).splitlines()[0]} (check the name; model arguments are "
                           f"written model__<name>, optimizer ones optimizer__<name>)") from None
        _check_model_args(est, point, hp_names)
    return pts, est, hp_names


def _check_model_args(est: Any, point: dict[str, Any], hp_names: set[str]) -> None:
    fn = est.model
    if not callable(fn):
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key in point:
        if key.startswith("model__") and key[7:] not in sig.parameters:
            raise BadInput(f"param_grid key {key!r}: {getattr(fn, '__name__', 'build_model')}() has no argument "
                           f"{key[7:]!r}; add it to the builder's signature or fix the name")


def _distributions(pts: list[dict[str, Any]]) -> dict[str, list[Any]]:
    choices: dict[str, list[Any]] = {}
    for p in pts:
        for k, v in p.items():
            if v not in choices.setdefault(k, []):
                choices[k].append(v)
    return choices


def _cv_data(data: Any) -> tuple[Any, Any]:
    import numpy as np

    return np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val])


def prepare(spec: StudySpec) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Submit-time check: the grid, the CV splitter against the labels, one tiny fit."""
    import numpy as np
    from sklearn.base import clone, is_classifier

    from tuner_service import data as data_mod
    from tuner_service.spec import ObjectiveSpec

    # The objective of a grid study is GridSearchCV's: the mean CV score (greater is better).
    spec.objective = ObjectiveSpec(name=f"mean_test_{spec.tuner.options.get('scoring') or 'score'}",
                                   direction="maximize")
    data = data_mod.load(spec.data, spec.seed)
    pts, est, hp_names = points(spec, data)
    options = GridOptions(**spec.tuner.options)
    x, y = _cv_data(data)
    cv = _splitter(options, y, is_classifier(est))
    if is_classifier(est) and isinstance(options.cv, int):
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() < options.cv:
            raise BadInput(f"cv={options.cv} is larger than the smallest class ({counts.min()} samples of class "
                           f"{labels[counts.argmin()]}); lower cv")
    try:
        n_splits = cv.get_n_splits(x, y)
    except ValueError as exc:
        raise BadInput(f"cv: {exc}") from None
    probe = clone(est).set_params(**{**_route(pts[0], hp_names), "epochs": 1})
    try:
        probe.fit(x[:64], y[:64])
    except Exception as exc:
        raise BadInput(f"model check failed: fitting the first grid point raised {type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    extra = {"data": {"source": spec.data.source, "hash": data.hash, "task": data.task, **data.sizes},
             "grid": {"points": len(pts), "cv_splits": n_splits, "choices": _distributions(pts)}}
    return None, extra, pts


def _splitter(options: GridOptions, y: Any, classifier: bool) -> Any:
    from sklearn import model_selection

    if isinstance(options.cv, dict):
        kwargs = {k: v for k, v in options.cv.items() if k != "name"}
        try:
            return getattr(model_selection, options.cv["name"])(**kwargs)
        except TypeError as exc:
            raise BadInput(f"cv: {exc}") from None
    return model_selection.check_cv(options.cv, y, classifier=classifier)


# ---------------------------------------------------------------------------- running


class GridRunner:
    """Evaluates grid points in a worker process (the :class:`~tuner_service.runners.Runner` of ``grid``)."""

    def __init__(self, spec: StudySpec) -> None:
        import keras
        from sklearn.base import is_classifier
        from sklearn.metrics import check_scoring

        from tuner_service import data as data_mod

        configure_gpu()
        self.keras = keras
        self.spec = spec
        self.options = GridOptions(**spec.tuner.options)
        self.data = data_mod.load(spec.data, spec.seed)
        self.estimator, self.hp_names = make_estimator(spec, self.data)
        self.x, self.y = _cv_data(self.data)
        self.cv = _splitter(self.options, self.y, is_classifier(self.estimator))
        self.scorer = check_scoring(self.estimator, self.options.scoring)
        self.backend = keras.backend.backend()
        self.device = device_name(keras)

    def preflight(self) -> dict[str, Any]:
        return {}  # ``prepare`` checked the grid at submit

    def run(self, trial: optuna.Trial, *, prune: bool = False) -> Outcome:
        import numpy as np
        from sklearn.base import clone
        from sklearn.model_selection import cross_validate

        frozen = trial.storage.get_trial(trial._trial_id)
        point = frozen.system_attrs.get(A.FIXED_PARAMS) or frozen.params
        choices = trial.study.user_attrs.get("grid", {}).get("choices", {})
        params = {k: trial.suggest_categorical(k, choices.get(k, [v])) for k, v in point.items()}
        est = clone(self.estimator).set_params(**_route(params, self.hp_names))
        t0 = time.perf_counter()
        try:
            res = cross_validate(est, self.x, self.y, cv=self.cv, scoring=self.scorer, error_score="raise",
                                 return_estimator=True)
        except Exception as exc:
            raise TrialError(f"cross-validation raised {error_line(exc)}") from exc
        finally:
            self.keras.backend.clear_session()
        scores = np.asarray(res["test_score"], dtype=float)
        if not np.all(np.isfinite(scores)):
            raise TrialError(f"a fold's score is not finite ({scores.tolist()}); the model diverged")
        for i, s in enumerate(scores):
            trial.report(float(s), i)
        attrs: dict[str, Any] = {f"split{i}_test_score": float(s) for i, s in enumerate(scores)}
        attrs.update({
            "mean_test_score": float(scores.mean()),
            "std_test_score": float(scores.std()),
            "mean_fit_time": float(np.mean(res["fit_time"])), "std_fit_time": float(np.std(res["fit_time"])),
            "mean_score_time": float(np.mean(res["score_time"])), "std_score_time": float(np.std(res["score_time"])),
            A.PARAM_COUNT: int(res["estimator"][0].model_.count_params()),
            A.TRIAL_SECONDS: round(time.perf_counter() - t0, 3),
        })
        details = {"fold_histories": [{k: [round(float(v), 6) for v in vals] for k, vals in e.history_.items()}
                                      for e in res["estimator"]]}
        return Outcome([float(scores.mean())], False, attrs, details)


def retrain_point(spec: StudySpec, trial: Any) -> Any:
    """GridSearchCV's refit: the best point on all CV data, scored once on the test split."""
    from sklearn.base import clone
    from sklearn.metrics import check_scoring

    from tuner_service import data as data_mod

    data = data_mod.load(spec.data, spec.seed)
    if len(data.x_test) == 0:
        raise BadInput(f"study {spec.name!r} has no test split (data.test_split is 0); nothing to evaluate on")
    template, hp_names = make_estimator(spec, data)
    options = GridOptions(**spec.tuner.options)
    x, y = _cv_data(data)

    def fit_one(seed: int) -> tuple[Any, dict[str, float], Any]:
        est = clone(template).set_params(**_route(trial.params, hp_names), random_state=seed, verbose=0)
        est.fit(x, y)
        score = check_scoring(est, options.scoring)(est, data.x_test, data.y_test)
        metrics = {options.scoring or "score": float(score)}
        y_test = est.target_encoder_.transform(data.y_test) if hasattr(est, "target_encoder_") else data.y_test
        evaluated = est.model_.evaluate(data.x_test, y_test, return_dict=True, verbose=0)
        metrics.update({k: float(v) for k, v in evaluated.items() if math.isfinite(float(v))})
        return est.model_, metrics, data

    return fit_one
