"""A claimed trial's parameter and per-epoch writes, batched into few transactions.

Optuna writes every ``suggest_*`` and every ``report`` in a transaction of its own (about a
millisecond each on SQLite, most of it Python). The claimed trial's ``optuna.Trial`` writes
through :class:`TrialWrites` instead, which keeps them and writes them together:

- the parameters drawn while the model is built, in one transaction when the runner says the
  model is built (:func:`flush`), so a retry of a run that dies later runs the same point (a run
  that dies while building is retried with fresh parameters: nothing of it was trained);
- per-epoch values at once when the study prunes (Hyperband reads every trial's values), else
  at most once a second (``REPORT_SECONDS``: the dashboard's live curves lag by that much);
- whatever is left, in the transaction that ends the run (its result, its failure, its
  hand-back), so a finished trial never lacks a parameter or an epoch it reported.

Values are checked as Optuna checks them when they are drawn or reported (a distribution
that conflicts with another trial's raises at once), and the trial's own view (its cached
record) is updated by Optuna's ``Trial`` as before, so samplers and pruners see the same.
"""

from __future__ import annotations

import os
import time
from typing import Any

from optuna.distributions import BaseDistribution, check_distribution_compatibility

from tuner_service.lifecycle import _sql
from tuner_service.storage import with_storage_retry

#: Per-epoch values of a study that does not prune are written at most this often (seconds).
REPORT_SECONDS = float(os.environ.get("TUNER_SERVICE_REPORT_SECONDS", "1.0"))


class TrialWrites:
    """The storage one claimed trial's ``optuna.Trial`` writes through: Optuna's storage for
    everything, except this trial's parameters and per-epoch values, which it batches."""

    def __init__(self, storage: Any, study_id: int, trial_id: int, *, prune: bool) -> None:
        self._storage, self._study_id, self.trial_id, self._prune = storage, study_id, trial_id, prune
        self.params: list[tuple[str, float, BaseDistribution]] = []
        self.reports: dict[int, float] = {}
        self._flushed = time.monotonic()

    def __getattr__(self, name: str) -> Any:  # every other storage method: Optuna's own
        return getattr(self._storage, name)

    @property
    def pending(self) -> bool:
        return bool(self.params or self.reports)

    def set_trial_param(self, trial_id: int, name: str, internal: float, distribution: BaseDistribution) -> None:
        if trial_id != self.trial_id:
            self._storage.set_trial_param(trial_id, name, internal, distribution)
            return
        known = self._known_distribution(name)
        if known is not None:
            check_distribution_compatibility(known, distribution)  # as Optuna does, at once
        self.params.append((name, internal, distribution))

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        if trial_id != self.trial_id:
            self._storage.set_trial_intermediate_value(trial_id, step, value)
            return
        self.reports[step] = value
        if self._prune or time.monotonic() - self._flushed >= REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what is pending now, in one transaction."""
        if self.pending:
            with_storage_retry(self._flush, what="recording parameters and epochs")
        self._flushed = time.monotonic()

    def _flush(self) -> None:
        with _sql.transaction(self._storage) as s:
            self.write(s)

    def write(self, session: Any) -> None:
        """Write what is pending inside the caller's transaction (the run's last one): one
        statement for the parameters, one for the per-epoch values."""
        unknown = {name: d for name, _, d in self.params if self._known_distribution(name) is None}
        for name, existing in _sql.study_distributions(session, self._study_id, list(unknown)).items():
            check_distribution_compatibility(existing, unknown[name])  # another trial's, as Optuna checks
        _sql.put_params_internal(session, self.trial_id, self.params)
        _sql.put_intermediate(session, self.trial_id, self.reports, fresh=True)
        self._remember(self.params)
        self.params, self.reports = [], {}

    def _known_distribution(self, name: str) -> BaseDistribution | None:
        """The distribution this study already has for ``name``, as Optuna's cache keeps it."""
        studies = getattr(self._storage, "_studies", None)
        info = studies.get(self._study_id) if studies is not None else None
        return info.param_distribution.get(name) if info is not None else None

    def _remember(self, params: list[tuple[str, float, BaseDistribution]]) -> None:
        studies = getattr(self._storage, "_studies", None)
        info = studies.get(self._study_id) if studies is not None else None
        if info is not None:
            for name, _, distribution in params:
                info.param_distribution.setdefault(name, distribution)


def flush(trial: Any) -> None:
    """The runner's word that the model is built: write the parameters drawn so far."""
    writes = getattr(trial, "storage", None)
    if isinstance(writes, TrialWrites):
        writes.flush()


def write_pending(trial: Any, session: Any) -> None:
    """Inside a transaction that ends the run: write what the trial still holds."""
    writes = getattr(trial, "storage", None)
    if isinstance(writes, TrialWrites) and writes.pending:
        writes.write(session)
