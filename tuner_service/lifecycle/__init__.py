"""The one trial lifecycle: every state change of a trial, each one transaction.

Every driver (``tuner-service worker``, the agent's runners and its reaper, ``submit
--workers``, ``tuner_service.keras_tuner`` searches, Ray actors) moves trials only through
this package; nothing else writes a trial's state. The promise "the budget is exact, nothing
is lost, no point runs twice" is a property of the state machine below alone.

Data
----
- A study's **budget counter** (table ``tuner_service_budget``): trial slots not started yet.
- **Trials** in Optuna's tables, in Optuna's states. A WAITING trial is a grid point or the
  retry of a dead run (its parameters already set); a RUNNING trial belongs to one process.
- A RUNNING trial's **heartbeat row** (Optuna's ``trial_heartbeats``), refreshed every
  ``HEARTBEAT_INTERVAL`` s by the process running it.

The state machine
-----------------
::

    budget slot ----claim-----> RUNNING ---complete/prune---> COMPLETE / PRUNED
    WAITING -------claim-----/     |  \\----fail (model)----> FAIL + reason
                                    |  \\---superseded-------> (nothing: someone else ended it)
                                    |---crash / stale-------> FAIL + reason + WAITING retry
                                    |                          (or FAIL "gave up after N crashes")
                                    '---hand back-----------> FAIL "handed back" + WAITING retry

Each arrow, who moves it, its transaction (T), and a process death between any two steps:

**claim** (a driver, :func:`claim`). T{the study is not paused, stopped or aborted; the oldest
WAITING trial, locked: set RUNNING and ``datetime_start``, write the heartbeat row and the run
attrs (host, pid, slot, device); or, with none, ``remaining -= 1 WHERE remaining > 0`` on the
budget counter and create the RUNNING trial with its run attrs and heartbeat row}. Death
before the commit: nothing changed. Death after it: a RUNNING trial *with* a heartbeat row,
so it goes stale and takes the crash arrow. On SQLite the transaction holds the write lock
from its first statement (``BEGIN IMMEDIATE``); on PostgreSQL the WAITING row is locked ``FOR
UPDATE SKIP LOCKED`` (concurrent claims take different rows) and the study row while a new
trial is numbered.

**heartbeat** (a daemon thread of the driver, :class:`Heartbeat`). T{heartbeat = now()}
every interval; after a failed beat it retries every second until one succeeds. A beat
changes nothing but the row, so dying at any point is the same as dying before it.

**draw and report** (the runner): the trial's parameters and per-epoch values are batched
(:mod:`tuner_service.lifecycle._writes`): T{the parameters drawn while the model was built}
once it is built (:func:`flush`); T{pending per-epoch values} at once when the study prunes,
else at most once a second; whatever is still pending goes into the transaction that ends
the run. Dying while the model is built loses its parameters (the retry draws new ones;
nothing was trained); dying later leaves them, and the values written so far, on the trial
that the crash arrow then fails; the retry runs the same parameters from epoch one (or from
its checkpoint with ``checkpoints: true``).

**complete / prune** (the driver, :func:`finish`). Before T, the sampler's ``after_trial``
(as ``Study.tell`` does) and the dashboard decoration (note, learning curve) run while the
trial is still RUNNING, so they may write to it; dying there leaves a RUNNING trial, which
goes stale. T{lock the trial; it is still RUNNING; write the outcome attrs; the values; the
state and ``datetime_complete``}. Death before the commit: RUNNING, stale, retried with the
same parameters (the run's result is lost, never half-written). If the lock finds the trial
no longer RUNNING, another driver failed it as stale and its retry exists: **superseded**,
nothing is written and the driver moves on.

**fail** (the driver, :func:`fail`): the model raised, diverged or does not log the
objective. T{lock; still RUNNING; ``fail_reason`` and the traceback; state FAIL}. No retry
(keras-tuner's ``max_retries_per_trial`` asks for ``retry=True``: the retry is enqueued in
the same T, counted apart from crashes). After it, the driver checks the study-wide run of
consecutive final failures (``MAX_CONSECUTIVE_FAILURES``) and marks the study aborted.

**crash** (a driver that outlives the run, :func:`requeue`): the runner process died (the
agent's reaper sees its exit), or the run's heartbeat went stale (any driver's housekeeping,
:func:`fail_stale`). T{lock; still RUNNING (and, for staleness, still stale when re-read
under the lock); ``fail_reason``; state FAIL; the WAITING retry with the same parameters and
distributions, ``retry_history``/``failed_trial`` (Optuna's conventions) and the chain's
crash and hand-back counts}. The crash count grows by one; past ``MAX_RETRIES`` crashes the
T fails the trial with "...; gave up after N crashes" and enqueues nothing. Because the
failure and its retry are one commit, no death and no storage error can lose the slot: either
both happened or neither did (the trial is still RUNNING and still stale, and the next check
tries again). A stale check that stops part-way has committed whole trials only; the next one
resumes with the rest.

**hand back** (the driver, on SIGTERM/SIGINT or a drain, :func:`requeue` with
``kind="hand_back"``): the same T as a crash, but it counts a hand-back, never a crash, and
never gives up: stopping a worker is not the trial's fault.

**reconcile** (housekeeping, :func:`reconcile`): a trial failed by code outside this package
(Optuna's own ``fail_stale_trials`` run by another program on the same database) has neither
a reason nor a retry. Those whose heartbeat had gone stale get the crash arrow's retry in one
T. A trial failed by hand (optuna-dashboard's "fail" button) while its heartbeat was fresh is
left as the user decided.

Liveness
--------
A RUNNING trial is stale when its heartbeat row is older than ``HEARTBEAT_GRACE`` seconds by
the database's clock, or, having no row at all (claimed by another tool), when it started
longer ago than that. A driver checks staleness only after its own storage access has been
healthy for ``LIVENESS_MARGIN`` seconds (two heartbeat intervals): after a storage outage,
every live run's heartbeat thread gets that long to write again before anyone judges it, so
an outage longer than the grace period fails no live trial. A process counts as having just
seen an outage when it starts, whenever any of its database calls fails on a connection
error (an SQLAlchemy ``handle_error`` hook on the engine, and the heartbeat thread), and when
a call retried with backoff tries again (the margin counts from the attempt that succeeds,
not from the last failure, which may be 10 s older than the database's return).

Transient storage errors (connection lost, server gone, lock timeouts) are retried by the
drivers with backoff (:func:`tuner_service.storage.with_storage_retry`); any other database
error (a value too long for its column, a constraint) fails the trial with its message. A
retried transaction whose commit succeeded but whose acknowledgement was lost finds its own
result on the next attempt and takes it as done.

Fault points (:mod:`tuner_service.lifecycle._failpoints`) sit between the steps of every
transaction and after every commit; ``TUNER_SERVICE_FAILPOINTS`` arms them in tests, where
they raise a storage error or SIGKILL the process exactly there.
"""

from __future__ import annotations

from tuner_service.lifecycle._driver import LoopOptions, TrialLoop, rss_mb
from tuner_service.lifecycle._liveness import Heartbeat, healthy_for, note_storage_error
from tuner_service.lifecycle._transitions import (
    HEARTBEAT_GRACE,
    HEARTBEAT_INTERVAL,
    MAX_CONSECUTIVE_FAILURES,
    MAX_RETRIES,
    Claimed,
    check_consecutive_failures,
    claim,
    fail,
    fail_stale,
    finish,
    reconcile,
    requeue,
)
from tuner_service.lifecycle._writes import flush

__all__ = [
    "HEARTBEAT_GRACE",
    "HEARTBEAT_INTERVAL",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_RETRIES",
    "Claimed",
    "Heartbeat",
    "LoopOptions",
    "TrialLoop",
    "check_consecutive_failures",
    "claim",
    "fail",
    "fail_stale",
    "finish",
    "flush",
    "healthy_for",
    "note_storage_error",
    "reconcile",
    "requeue",
    "rss_mb",
]
