"""Runners: what runs one trial. The only code that imports Keras for search trials.

A runner is created once per process (imports, user code and data are paid once) and runs
many trials. The lifecycle (:mod:`tuner_service.lifecycle`) claims a trial, hands it to
``runner.run``, and records what comes back; a runner never changes a trial's state itself.

The contract (:class:`Runner`):

- ``backend`` and ``device``: recorded with every trial it runs.
- ``preflight()``: the submit-time check (build with defaults, fit two batches); raises
  :class:`~tuner_service.errors.BadInput` with one line. Nothing is written to storage.
- ``run(trial, *, prune) -> Outcome``: build, fit, report every epoch through ``trial``, and
  return the values (or ``pruned``) with the attrs to store. It raises
  :class:`~tuner_service.errors.TrialError` for a failure that is the model's fault (the
  trial is failed with that message), :class:`TrialInterrupted` when the process is asked to
  stop (the trial is handed back), and :class:`~tuner_service.errors.StorageOutage` when the
  storage stayed away (the trial is left to the heartbeat).

Implementations: :class:`tuner_service.runners.keras.KerasRunner` (keras-tuner style
``build_model(hp)`` / ``HyperModel``), :class:`tuner_service.runners.grid.GridRunner`
(GridSearchCV's cross-validation through SciKeras) and the keras-tuner API's runner in
:mod:`tuner_service.keras_tuner` (a user's ``Tuner.run_trial``). :func:`make_runner` picks
the one a study's tuner names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna

    from tuner_service.spec import StudySpec

__all__ = ["Outcome", "Runner", "TrialInterrupted", "make_runner"]


@dataclass
class Outcome:
    """What a finished run reports: its objective values (None when pruned), the short attrs
    the dashboard shows (``param_count``, ``best_epoch``...) and the long ``details`` (the
    per-epoch history, the model summary) stored as system attrs."""

    values: list[float] | None
    pruned: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        return None if not self.values else self.values[0]


class TrialInterrupted(BaseException):
    """Raised into a running fit when the process is asked to stop (SIGTERM/SIGINT): the
    trial is handed back. A BaseException, so a user's ``except Exception`` cannot swallow it."""


class Runner(Protocol):
    backend: str
    device: str

    def preflight(self) -> dict[str, Any]: ...

    def run(self, trial: optuna.Trial, *, prune: bool) -> Outcome: ...


def make_runner(spec: StudySpec, **kwargs: Any) -> Runner:
    """The runner for ``spec``'s tuner (grid: cross-validation; otherwise Keras)."""
    if spec.tuner.name == "grid":
        from tuner_service.runners.grid import GridRunner

        return GridRunner(spec, **kwargs)
    from tuner_service.runners.keras import KerasRunner

    return KerasRunner(spec, **kwargs)
