"""Which study a runner slot serves next, and the housekeeping done on the way.

Shared by the two drivers that keep runner slots busy: the machine agent
(:mod:`tuner_service.agent`, one runner *process* per slot) and the Ray executor
(:mod:`tuner_service.ray_executor`, one runner *actor* per slot). Both decide the same way:

- **Active studies**: ready (fully submitted), not created by the keras-tuner API, not aborted,
  stopped, paused or timed out, with something claimable (a WAITING trial or a budget slot), and servable on
  this machine. Listing them also runs the liveness check of every study (stale heartbeats
  failed and re-queued, also in studies with no budget left, whose runners no longer look).
- **Choice**: highest ``priority`` first, then submission order; among studies of equal
  priority, the one with the fewest runners now (fair share).
- **Refusals**: a study this machine cannot serve (model source differs, a file its spec names
  is missing, it belongs to the keras-tuner API) is logged once, recorded in the study
  (``tuner-service status`` shows it under ``refused_by``) and checked again every
  ``TUNER_SERVICE_REFUSAL_RECHECK`` seconds, so a fixed checkout is served without a restart.
- **Crashes**: a runner that died mid-trial costs only its trial: :meth:`Scheduler.requeue_trials`
  takes the lifecycle's crash arrow for the trials it held, identified by the run attrs
  recorded with each claim (host and pid for a process, the actor id for a Ray actor).

And the environment a runner gets before it imports Keras (:func:`runner_env`): GPU pinning,
memory growth, and the per-runner memory cap when K runners share one GPU.

Nothing here imports Keras, TensorFlow or Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tuner_service import attrs as A
from tuner_service import study as study_mod
from tuner_service.errors import Refused
from tuner_service.storage import mask_password

_log = logging.getLogger(__name__)
REFUSAL_RECHECK_SECONDS = float(os.environ.get("TUNER_SERVICE_REFUSAL_RECHECK", "30"))
#: Study system attr (one per host) recording why that host refuses the study.
REFUSED_ATTR_PREFIX = "refused:"
#: Share of a GPU's memory that K runners on it split between them (the rest: CUDA contexts).
GPU_SHARE = 0.9


class ActiveStudy(NamedTuple):
    """A study a slot could serve now; sorted best first by ``(-priority, submitted_at)``."""

    priority: int
    submitted_at: str
    name: str
    claimable: int  # WAITING trials + budget slots not taken yet


@dataclass
class Refusal:
    reason: str
    checked: float  # monotonic time of the last check


@dataclass
class Scheduler:
    """Active studies, choice, refusals and liveness for one driver (an agent or a Ray driver).

    ``say`` reports what the driver should tell its user (refusals, recoveries)."""

    storage: Any
    only: set[str] = field(default_factory=set)  # serve only these studies (empty: all)
    host: str = field(default_factory=socket.gethostname)
    say: Callable[[str], None] = _log.info
    refused: dict[str, Refusal] = field(default_factory=dict)  # study -> why this machine cannot serve it
    stale_checked: dict[str, float] = field(default_factory=dict)  # study -> monotonic time

    # ------------------------------------------------------------------ what to serve

    def active_studies(self) -> list[ActiveStudy]:
        """The studies this machine can serve that have something claimable, best first.
        Checks every study's heartbeats on the way."""
        from tuner_service.lifecycle import _sql

        out = []
        for s in self.storage.get_all_studies():
            name = s.study_name
            if self.only and name not in self.only:
                continue
            attrs = s.user_attrs
            if not attrs.get(A.READY) or attrs.get(A.KERAS_TUNER):
                continue
            self.check_liveness(name)
            spec_raw = attrs.get(A.SPEC) or {}
            if (study_mod.stop_reason(attrs, (spec_raw.get("budget") or {}).get("timeout"))
                    or study_mod.control_state(attrs) == study_mod.PAUSED):
                continue
            _sql.ensure_budget_table(self.storage)
            with _sql.read(self.storage) as session:
                claimable = _count_waiting(session, s._study_id) + _sql.remaining(session, s._study_id)
            if not claimable or self.refuses(name):
                continue
            out.append(ActiveStudy(int(spec_raw.get("priority", 0)), attrs.get(A.SUBMITTED_AT, ""), name, claimable))
        out.sort(key=lambda x: (-x.priority, x.submitted_at))
        return out

    @staticmethod
    def choose(active: list[ActiveStudy], load: Mapping[str, int]) -> str | None:
        """The study the next free slot serves: the highest priority, then the fewest runners
        now (``load``: study -> runners), then submission order (``active`` is in that order)."""
        if not active:
            return None
        top = active[0].priority
        candidates = [a for a in active if a.priority == top]
        return min(candidates, key=lambda a: load.get(a.name, 0)).name

    # ------------------------------------------------------------------ liveness

    def check_liveness(self, study_name: str) -> None:
        """Fail and re-queue trials whose heartbeat went stale, also in studies with no budget
        left (no runner of theirs would look any more); at most once per heartbeat interval."""
        import optuna

        from tuner_service import lifecycle

        now = time.monotonic()
        if now - self.stale_checked.get(study_name, 0.0) < lifecycle.HEARTBEAT_INTERVAL:
            return
        self.stale_checked[study_name] = now
        study = optuna.load_study(study_name=study_name, storage=self.storage)
        lifecycle.fail_stale(study)
        lifecycle.reconcile(study)

    def requeue_trials(self, study_name: str | None, match: Mapping[str, Any], reason: str, *,
                       kind: str = "crash") -> list[int]:
        """The lifecycle's crash (or hand-back) arrow for the RUNNING trials of ``study_name``
        whose run attrs equal ``match`` (e.g. ``{host: H, pid: P}``: a dead runner process).
        Returns the numbers of the trials it re-queued."""
        import optuna
        from optuna.trial import TrialState

        from tuner_service import lifecycle

        if study_name is None:
            return []
        study = optuna.load_study(study_name=study_name, storage=self.storage)
        numbers = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if all(t.user_attrs.get(k) == v for k, v in match.items()):
                lifecycle.requeue(study, t._trial_id, kind=kind, reason=reason)
                numbers.append(t.number)
        return numbers

    # ------------------------------------------------------------------ refusals

    def refuses(self, name: str) -> bool:
        """Whether this machine cannot serve study ``name`` (checked again every
        ``REFUSAL_RECHECK_SECONDS``; the first refusal and the recovery are reported once)."""
        refusal = self.refused.get(name)
        now = time.monotonic()
        if refusal is not None and now - refusal.checked < REFUSAL_RECHECK_SECONDS:
            return True
        try:
            study_mod.servable_spec(study_mod.load(self.storage, name))
        except Refused as exc:
            self.refuse(name, str(exc))
            return True
        if refusal is not None:
            del self.refused[name]
            self.say(f"serving study {name!r} again: it can run on this machine now")
            self.record_refusal(name, None)
        return False

    def refuse(self, name: str, reason: str) -> None:
        """Remember (and report once per reason) that study ``name`` cannot be served here."""
        known = self.refused.get(name)
        self.refused[name] = Refusal(reason, time.monotonic())
        if known is None or known.reason != reason:
            self.say(f"refusing study {name!r}: {mask_password(reason)}")
            self.record_refusal(name, reason)

    def record_refusal(self, name: str, reason: str | None) -> None:
        """What ``status`` shows: per host, why it does not serve the study (None: it does)."""
        try:
            value = None if reason is None else {"reason": mask_password(reason), "at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            study_id = self.storage.get_study_id_from_name(name)
            self.storage.set_study_system_attr(study_id, f"{REFUSED_ATTR_PREFIX}{self.host}", value)
        except Exception as exc:  # bookkeeping for `status`; never worth stopping the driver
            _log.warning("could not record the refusal of %r: %s", name, exc)


def _count_waiting(session: Any, study_id: int) -> int:
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import func, select

    t = models.TrialModel
    return int(session.execute(select(func.count()).select_from(t).where(
        t.study_id == study_id, t.state == TrialState.WAITING)).scalar() or 0)


# ---------------------------------------------------------------------------- runner environment


def gpu_memory_mb(gpu: str) -> int | None:
    """Total memory of GPU ``gpu`` (nvidia-smi's index, PCI bus order), or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--id={gpu}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return int(float(out.strip().splitlines()[0]))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def gpu_activity() -> dict[str, tuple[float, float]]:
    """``{index: (utilisation %, memory used MB)}`` of every GPU nvidia-smi lists (its
    utilisation: the share of the last sample period in which a kernel ran); ``{}`` without it."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    found = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            found[parts[0]] = (float(parts[1]), float(parts[2]))
        except (IndexError, ValueError):  # "[N/A]" on some GPUs
            continue
    return found


def runner_env(base: Mapping[str, str], *, cuda_visible_devices: str, memory_mb: int | None = None,
               sharing: int = 1) -> dict[str, str]:
    """Pinning and memory settings for a runner, set before it imports Keras: ``base`` (the
    driver's environment) with ``CUDA_VISIBLE_DEVICES`` (``""`` hides every GPU).

    Memory growth for every backend: TensorFlow's allow-growth, and no preallocation for JAX
    (whose default takes 75% of the GPU at start-up). When ``sharing`` runners share a GPU, the
    cap ``TUNER_SERVICE_GPU_MEMORY_MB`` (applied by TensorFlow and torch in
    ``runners._env.configure_gpu``) is also given to JAX as ``XLA_PYTHON_CLIENT_MEM_FRACTION``,
    which bounds its allocator's growth. Variables already set in ``base`` win."""
    env = {**base, "CUDA_VISIBLE_DEVICES": cuda_visible_devices, "TF_FORCE_GPU_ALLOW_GROWTH": "true",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # nvidia-smi numbers GPUs by PCI bus; CUDA's default order (fastest first) can differ.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if memory_mb:
        env["TUNER_SERVICE_GPU_MEMORY_MB"] = str(memory_mb)
        # The same share as memory_mb, as JAX wants it: a fraction.
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{GPU_SHARE / max(sharing, 1):.4f}")
    return env


def shared_gpu_cap_mb(gpu: str, sharing: int) -> int | None:
    """Each of ``sharing`` runners' memory cap on GPU ``gpu`` (None: one runner, or no nvidia-smi)."""
    if sharing <= 1:
        return None
    total = gpu_memory_mb(gpu)
    return int(total * GPU_SHARE / sharing) if total else None


def count_by(items: Iterable[str | None]) -> dict[str, int]:
    """How many times each (non-None) name occurs: the ``load`` that :meth:`Scheduler.choose` takes."""
    out: dict[str, int] = {}
    for name in items:
        if name is not None:
            out[name] = out.get(name, 0) + 1
    return out
