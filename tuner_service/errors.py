"""Errors with a meaning the CLI and the drivers act on, and their exit codes.

- :class:`BadInput` (exit 2): the user asked for something that cannot work. The CLI prints
  its message as one line; nothing has been written to storage.
- :class:`TrialError`: one trial failed for a reason that retrying will not fix (the model
  raised, the objective went NaN). The trial is FAIL with the reason; the worker carries on.
- :class:`StudyAborted` (exit 3): the study stopped (too many consecutive failed trials).
- :class:`StorageOutage` (exit 4): the storage stayed unreachable; not the trial's fault.
- :class:`Refused` (exit 5): this process cannot serve a study (its model source differs
  here, its stored spec does not validate on this machine, it belongs to the keras-tuner
  API). Agents log it once, leave the study alone and check it again later.
"""

from __future__ import annotations

import re


class TunerServiceError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class BadInput(TunerServiceError):
    """A user error: the message names the bad value and the fix, on one line."""

    exit_code = 2


class StorageUnavailable(BadInput):
    """The storage URL cannot be reached or opened."""


class TrialError(TunerServiceError):
    """One trial failed; retrying the same parameters would fail again (``retry=True``: the
    keras-tuner API's ``max_retries_per_trial`` asks for it anyway)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


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


class Refused(BadInput):
    """This process cannot serve the study; the message says why and what would fix it."""

    exit_code = 5


#: Keras wraps an error raised inside a layer's call() in this paragraph, then the cause, then
#: the arguments the call received; the cause is the informative part.
_KERAS_CALL = re.compile(r"^Exception encountered when calling [^\n]*\n", re.MULTILINE)
#: Terminal colour codes (Keras bolds its messages) and printed arrays ("[[[0. 0. ...]]]",
#: many lines of them) say nothing in one line.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A printed numpy array's innermost row: numbers and spaces, no commas (``[0. 0.25 ... 1e-05]``;
#: a shape like ``[3, 4]`` has commas and stays).
_NUMBERS = re.compile(r"\[[^\[\],A-DF-Za-df-z]*\]")


def _arrays_out(text: str) -> str:
    """Printed arrays, however nested, become ``<array>``."""
    while True:
        shorter = _NUMBERS.sub("\x00", text)
        if shorter == text:
            break
        text = shorter
    return re.sub(r"\x00(?:[\s.]*\x00)*", "<array>", text)


def error_line(exc: BaseException, limit: int = 400) -> str:
    """``TypeName: the informative line`` of an exception, for one-line messages.

    Keras' "Exception encountered when calling Layer.call()" wrapper is skipped for the
    message it wraps (which says which shape was expected and which was received);
    TensorFlow's "Graph execution error" preamble for its last line; otherwise the first
    non-empty line."""
    text = _arrays_out(_ANSI.sub("", str(exc))).strip()
    match = _KERAS_CALL.search(text)
    if match:
        rest = text[match.end():].split("Arguments received by", 1)[0]
        rest = " ".join(rest.split())
        if rest:
            text = rest
    elif text.startswith("Graph execution error"):
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("File ", "  "))]
        text = lines[-1] if lines else text
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[0] if lines else ""
    text = " ".join(text.split())[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
