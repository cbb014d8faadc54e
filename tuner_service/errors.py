"""Errors with a meaning the CLI and the workers act on.

- :class:`BadInput`: the user asked for something that cannot work. The CLI prints its
  message as one line and exits with code 2; nothing has been written to storage.
- :class:`TrialError`: a single trial failed for a reason that retrying will not fix (the
  model raised, the objective went NaN). The trial is marked FAIL with the reason; the
  worker carries on.
- :class:`StudyAborted`: the study should stop (too many consecutive failed trials).
"""

from __future__ import annotations


class TunerServiceError(Exception):
    """Base class of every error this package raises on purpose."""


class BadInput(TunerServiceError):
    """A user error: the message names the bad value and the fix, on one line."""

    exit_code = 2


class StorageUnavailable(BadInput):
    """The storage URL cannot be reached or opened."""


class TrialError(TunerServiceError):
    """One trial failed; retrying the same parameters would fail again."""


class StudyAborted(TunerServiceError):
    """The study was stopped (e.g. too many consecutive failed trials)."""

    exit_code = 3


class WorkersFailed(TunerServiceError):
    """Local worker processes exited while the study still had work left."""

    exit_code = 1


class StorageOutage(TunerServiceError):
    """The storage stayed unreachable while a study was running (not a user error: a worker
    exits with this code and its trial is re-queued by whoever sees its heartbeat go stale)."""

    exit_code = 4
