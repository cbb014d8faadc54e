"""The ``grid`` tuner: GridSearchCV's search, one stored Optuna trial per grid point.

Here are only its options and its (trivial) sampler: every trial is an enqueued point with
fixed parameters, so the sampler never chooses. Enumerating the grid against the estimator,
cross-validating a point and the refit live with the runners
(:mod:`tuner_service.runners.grid`), the only code that imports Keras and SciKeras.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import field_validator

from tuner_service import tuners

GridValue = Union[None, bool, int, float, str]
PRIMITIVES = (type(None), bool, int, float, str)


class GridOptions(tuners._Options):
    param_grid: Union[dict[str, Any], list[dict[str, Any]], None] = None
    cv: Union[int, dict[str, Any]] = 3
    scoring: str | None = None
    estimator: Literal["auto", "classifier", "regressor"] = "auto"

    @field_validator("cv")
    @classmethod
    def _cv(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 2:
            raise ValueError(f"cv={v} must be at least 2 folds")
        if isinstance(v, dict):
            from sklearn import model_selection

            name = v.get("name")
            if not name or not hasattr(model_selection, str(name)) or not str(name).endswith(("Fold", "Split")):
                raise ValueError(f"cv splitter {name!r} is not a scikit-learn splitter; use e.g. "
                                 "{name: StratifiedKFold, n_splits: 3, shuffle: true, random_state: 0}")
        return v

    @field_validator("scoring")
    @classmethod
    def _scoring(cls, v: str | None) -> str | None:
        if v is not None:
            from sklearn.metrics import get_scorer_names

            if v not in get_scorer_names():
                raise ValueError(f"scoring {v!r} is not a scikit-learn scorer; see sklearn.metrics.get_scorer_names()")
        return v


def cv_results_rows(trials: list[Any]) -> list[dict[str, Any]]:
    """The study's COMPLETE points as ``GridSearchCV.cv_results_`` rows (with rank_test_score)."""
    from scipy.stats import rankdata

    done = [t for t in trials if t.state.name == "COMPLETE" and "mean_test_score" in t.user_attrs]
    done.sort(key=lambda t: t.number)
    means = [t.user_attrs["mean_test_score"] for t in done]
    ranks = rankdata([-m for m in means], method="min").astype(int) if done else []
    rows = []
    for t, rank in zip(done, ranks, strict=True):
        a = t.user_attrs
        row: dict[str, Any] = {k: a[k] for k in ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["params"] = t.params
        row.update({k: v for k, v in a.items() if k.startswith("split") and k.endswith("_test_score")})
        row.update({"mean_test_score": a["mean_test_score"], "std_test_score": a["std_test_score"],
                    "rank_test_score": int(rank), "trial": t.number})
        rows.append(row)
    return rows


def _grid_sampler_pruner() -> tuple[Any, Any]:
    import optuna

    # Every trial is an enqueued point with fixed params: the sampler never chooses.
    return optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()


tuners.register("grid", tuners.Tuner(
    GridOptions,
    lambda spec, worker: _grid_sampler_pruner(),
    "GridSearchCV through SciKeras: one trial per grid point, cross-validated",
    prepare="tuner_service.runners.grid:prepare",
    max_objectives=1,  # GridSearchCV's mean CV score
))
