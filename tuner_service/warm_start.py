"""Known configurations a study tries first: ``enqueue:`` (written in the study file) and
``warm_start:`` (the top-k trials of an earlier study, in this storage or another).

They become the study's first WAITING trials with Optuna's ``fixed_params`` (what
``Study.enqueue_trial`` writes), taking their places in the budget, so workers claim them
before any sampled trial. A parameter the new model does not register on its default path is
dropped with a warning, unless the earlier study had it only in some trials (a conditional
parameter, such as the units of a third layer, which the new model registers only when its
branch is taken); a value outside the new parameter's range or choices is dropped too, so it is
sampled. Parameters the configuration lacks are sampled as usual.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tuner_service.errors import BadInput

if TYPE_CHECKING:
    from tuner_service.spec import StudySpec, WarmStartSpec

_log = logging.getLogger(__name__)


def initial_points(spec: StudySpec, storage_url: str, hyperparameters: list[Any] | None) -> tuple[
        list[dict[str, Any]], list[str]]:
    """(configurations to enqueue, warnings), at most the study's budget of them."""
    raw = [dict(p) for p in spec.enqueue]
    conditional: set[str] = set()
    if spec.warm_start is not None:
        top, conditional = top_k(spec.warm_start, storage_url)
        raw += top
    warnings: list[str] = []
    known = {hp.name: hp for hp in hyperparameters or []}
    points = []
    for i, point in enumerate(raw):
        kept = {}
        for name, value in point.items():
            hp = known.get(name)
            if hp is None and known and name not in conditional:
                warnings.append(f"configuration {i + 1}: parameter {name!r} is not in this model's space; dropped")
                continue
            if hp is not None and not _accepts(hp, value):
                warnings.append(f"configuration {i + 1}: {name}={value!r} is outside this model's {name!r}; "
                                "dropped (it will be sampled)")
                continue
            kept[name] = value
        points.append(kept)
    from tuner_service import tuners

    budget = tuners.planned_trials(spec)
    if len(points) > budget:
        warnings.append(f"{len(points)} configurations to try first but a budget of {budget} trials; "
                        f"the first {budget} are kept")
        points = points[:budget]
    for w in warnings:
        _log.warning(w)
    return points, warnings


def top_k(warm: WarmStartSpec, storage_url: str) -> tuple[list[dict[str, Any]], set[str]]:
    """The parameters of the earlier study's ``top_k`` best completed trials that meet its
    constraints (by its first objective; ties: the earliest), and the names of the parameters
    only some of its trials have."""
    from tuner_service import queries

    url = warm.storage or storage_url
    with queries._open(url) as reader:
        try:
            record = reader.study(warm.study, attr_keys=())
        except BadInput as exc:
            raise BadInput(f"warm_start.study: {exc}") from None
    done = [t for t in record.trials if t.state == "COMPLETE" and t.value is not None and t.feasible]
    if not done:
        raise BadInput(f"warm_start.study {warm.study!r} has no completed trial to start from; "
                       "run it first or drop warm_start:")
    done.sort(key=lambda t: (queries._signed(t.value, record.maximize), t.number))
    everywhere = set.intersection(*(set(t.params) for t in done))
    conditional = {p for t in done for p in t.params} - everywhere
    return [dict(t.params) for t in done[:warm.top_k]], conditional


def _accepts(hp: Any, value: Any) -> bool:
    """Whether keras-tuner hyperparameter ``hp`` can take ``value``."""
    from keras_tuner.engine import hyperparameters as kt_hp

    if isinstance(hp, kt_hp.Fixed):
        return bool(value == hp.value)
    if isinstance(hp, kt_hp.Boolean):
        return isinstance(value, bool)
    if isinstance(hp, kt_hp.Choice):
        return value in list(hp.values)
    if isinstance(hp, (kt_hp.Int, kt_hp.Float)):
        try:
            return hp.min_value <= float(value) <= hp.max_value
        except (TypeError, ValueError):
            return False
    return True
