"""Run studies on an existing Ray cluster: runner actors placed by Ray, no agent per machine.

``tuner-service agent --ray auto|ADDRESS`` (and ``submit ... --ray ADDRESS``) connects to a
Ray cluster and keeps *runner actors* busy on it, one per slot, the way an agent keeps runner
processes busy on one machine. The storage (PostgreSQL) stays the single source of truth and
the queue: each actor runs a :class:`~tuner_service.worker.Worker` (:mod:`tuner_service.ray_actor`)
that claims trials exactly as an agent's runner does. Ray is the placement and process engine:

- **Slots.** With ``--gpus all`` (default) a slot is an actor with ``num_gpus=1/K``
  (``--trials-per-gpu K``) and ``--cpus-per-trial`` CPUs (default 1); Ray places it and sets
  ``CUDA_VISIBLE_DEVICES``. With K > 1 each actor gets the agent's memory caps (``runner_env``:
  TensorFlow's logical device and torch's fraction of 90%/K of its GPU, JAX's
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``). With ``--gpus none`` a slot is an actor with
  ``--cpus-per-trial C`` CPUs and C TensorFlow threads, every GPU hidden.
- **Elastic.** Each poll the driver creates actors while the cluster's *free* resources hold
  one more slot (nodes joining add slots at once), never more actors for a study than it has
  claimable trials, and no new actor while one of its own still waits for placement. When the
  cluster is full and studies want more, one actor waits for placement: it takes the next slot
  that frees up, and it is the resource demand an autoscaler (KubeRay's) adds a node for, also
  when the GPU group is scaled to zero. An actor whose study has nothing claimable returns and
  is killed, releasing its resources (so the autoscaler can scale down); actors still waiting
  for a node are killed when their study no longer needs them.
- **Choice and fairness** are the agent's (:class:`tuner_service.scheduling.Scheduler`):
  priority, then submission order, fewest actors first among equal priorities; refusals are
  logged once and re-checked; every study's heartbeats are checked on the way.
- **Recycling.** An actor serves at most ``--recycle-after N`` trials (or stops above
  ``--runner-memory-mb``), then is killed and replaced, so its memory is really returned.
- **Failures.** Actors are created with ``max_restarts=-1``: one lost with its process or its
  node is restarted by Ray wherever resources allow. The driver survives the loss and reports
  it; the trials the actor held (found by the ``ray_actor`` attr recorded with each claim) take
  the lifecycle's crash arrow: at once when the actor's node is gone, else as soon as the
  restarted actor answers (its old run is certainly over then). If neither happens (the driver
  itself is gone), the heartbeat path re-queues them after the grace period.
- **Stopping.** On SIGINT/SIGTERM the driver kills its actors and hands their running trials
  back (re-queued, not counted as crashes). A drain (SIGUSR1, or ``tuner-service agent --drain``
  through the agents' registry, where the driver is listed like an agent) lets every running
  trial finish, starts none, then exits. Ray ends a driver's actors when the driver dies.

Nothing imports Ray until a driver connects; without it, ``--ray`` says how to install it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner_service.errors import BadInput
from tuner_service.ray_actor import RAY_ACTOR, ActorSettings, RunnerActor, StorageURL
from tuner_service.registry import Membership, RegistryMember
from tuner_service.scheduling import ActiveStudy, Scheduler, count_by
from tuner_service.storage import mask_password, open_storage, resolve_url, with_storage_retry

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from tuner_service.spec import StudySpec

_log = logging.getLogger(__name__)
POLL_SECONDS = float(os.environ.get("TUNER_SERVICE_AGENT_POLL", "1.0"))
INSTALL_HINT = "pip install 'tuner-service[ray]'"
#: Environment variables never sent to actors (Ray shows an actor's environment on its dashboard).
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")
_FORWARDED = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS")
_HAND_BACK_REASON = "handed back (Ray driver stopped)"


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's settings every actor applies before it imports anything: ``TUNER_SERVICE_*``
    (heartbeat, retries...), ``KERAS_BACKEND``; never the storage URL or anything secret."""
    out = {}
    for key, value in environ.items():
        if not (key.startswith("TUNER_SERVICE_") or key in _FORWARDED):
            continue
        if key == "TUNER_SERVICE_STORAGE" or key.startswith("TUNER_SERVICE_DASHBOARD") or \
                any(w in key for w in _SECRET_WORDS):
            continue
        out[key] = value
    return out


# ---------------------------------------------------------------------------- connecting


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput(f"--ray needs Ray on this machine: {INSTALL_HINT}") from None
    return ray


def resolve_address(address: str) -> str:
    """``auto`` (``$RAY_ADDRESS``, else the cluster ``ray start`` last started on this machine)
    or ``HOST:PORT`` -> the head node's ``HOST:PORT``, checked reachable: Ray itself waits for
    minutes on an address where nothing listens."""
    import ray._private.services as services

    address = address.strip()
    if not address or address.startswith("-"):
        raise BadInput(f"--ray {address!r} is not an address; use --ray auto or --ray HOST:PORT (the head node's, "
                       "port 6379 by default)")
    if address.startswith("ray://"):  # Ray Client: ray.init checks it
        target = address
        host_port = address.removeprefix("ray://").split("/")[0]
    else:
        try:
            target = services.canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as exc:
            raise BadInput(f"--ray {address}: no Ray cluster found ({str(exc).splitlines()[0]}); start one with "
                           "`ray start --head` or give the head node's address, e.g. --ray 10.0.0.1:6379") from None
        host_port = target
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise BadInput(f"--ray {address!r} is not HOST:PORT; use e.g. --ray 10.0.0.1:6379 or --ray auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise BadInput(f"cannot reach the Ray cluster at {host_port} ({exc.strerror or exc}); check --ray and that "
                       "`ray start --head` runs there") from None
    return target


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address`` (see :func:`resolve_address`)."""
    ray = import_ray()
    target = resolve_address(address)
    if not ray.is_initialized():
        # The actors' output stays in Ray's logs on their nodes (the dashboard shows it): the
        # driver reports placements, losses and outcomes itself.
        ray.init(address=target, namespace="tuner-service", logging_level=logging.WARNING, log_to_driver=False)
    return ray


# ---------------------------------------------------------------------------- the driver


@dataclass
class ActorSlot:
    """One runner actor of this driver and what it is doing."""

    handle: Any
    study: str
    number: int
    actor_id: str | None = None  # known once placed (where() answers)
    ready: Any = None  # where() in flight: waiting for placement, or restarting after a loss
    running: Any = None  # run() in flight
    placed: bool = False  # answered where() at least once
    node: str | None = None
    node_ip: str | None = None
    lost_reason: str | None = None  # a loss seen: its trials are re-queued when where() answers
    restarting: bool = False  # lost; where() asks until Ray has restarted it somewhere
    ask_at: float = 0.0  # when to ask a restarting actor again (monotonic)


@dataclass
class Summary:
    actors_started: int = 0
    actors_lost: int = 0
    trials_run: int = 0
    requeued: list[int] = field(default_factory=list)  # trial numbers re-queued after losses
    by_node: dict[str, int] = field(default_factory=dict)  # node address -> trials run there


class RayExecutor(RegistryMember):
    """Keeps runner actors busy on a Ray cluster with trials of every study that has budget left."""

    def __init__(self, storage_url: str | None, address: str, *, gpus: str = "all", trials_per_gpu: int = 1,
                 cpus_per_trial: float | None = None, studies: list[str] | None = None,
                 max_trials_per_runner: int = 50, memory_limit_mb: int | None = None,
                 console: Console | None = None, poll: float = POLL_SECONDS) -> None:
        gpus = gpus.strip().lower()
        if gpus not in ("all", "none"):
            raise BadInput(f"--gpus {gpus!r} with --ray: Ray assigns the GPUs; use --gpus all (GPU slots wherever the "
                           "cluster has GPUs) or --gpus none (CPU slots)")
        if trials_per_gpu < 1:
            raise BadInput(f"--trials-per-gpu {trials_per_gpu} must be at least 1")
        if cpus_per_trial is not None and (cpus_per_trial < 0 or (cpus_per_trial == 0 and gpus == "none")):
            raise BadInput(f"--cpus-per-trial {cpus_per_trial:g} must be positive (0 only for GPU slots)")
        self.url = resolve_url(storage_url)
        self.address = address
        self.use_gpus = gpus == "all"
        self.trials_per_gpu = trials_per_gpu
        self.cpus_per_trial = cpus_per_trial
        self.max_trials_per_runner = max_trials_per_runner
        self.memory_limit_mb = memory_limit_mb
        self.console = console
        self.poll = poll
        self.storage = with_storage_retry(open_storage, self.url, create=False, what="opening the storage")
        self.host = socket.gethostname()
        self.scheduler = Scheduler(self.storage, only=set(studies or []), host=self.host, say=self._say)
        self.slots: list[ActorSlot] = []
        self.summary = Summary()
        self.ray: Any = None
        self._actor_class: Any = None
        self._stop = threading.Event()
        self._said_shape = False
        self._no_gpu_warned = False
        # The agents' registry (`status` lists this driver; `agent --drain` reaches it), as an agent.
        self.membership = Membership(self.storage, self.host, len(self.slots))
        self._draining = False
        self._drain_asked = False
        self._nodes: dict[str, str] = {}  # alive node id -> address
        self._active: list[ActiveStudy] = []

    # ------------------------------------------------------------------ main loop

    def run(self, *, once: bool = False) -> Summary:
        """Serve until stopped (SIGINT/SIGTERM); ``once``: until no study has anything left."""
        self.ray = connect(self.address)
        self._actor_class = self.ray.remote(RunnerActor)
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, lambda *_: self._stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
            old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: self.drain())
        self._say(f"Ray driver on {self.host}: cluster {self.address}, storage {mask_password(self.url)}")
        try:
            while not self._stop.is_set():
                self._watch_nodes()
                self._collect()
                self._beat_registry()
                if self._draining:
                    if self._drain_actors():
                        break
                    self._wait()
                    continue
                self._active = with_storage_retry(self.scheduler.active_studies, what="listing studies")
                self._release()
                self._ask_restarting()
                self._fill()
                if once and not self._active and not self.slots:
                    break
                self._wait()
        finally:
            self.shutdown()
            self._leave_registry()
            for s, h in old.items():
                signal.signal(s, h)
        return self.summary

    def stop(self) -> None:
        """Stop at once: the running trials are handed back (SIGINT/SIGTERM)."""
        self._stop.set()

    def drain(self) -> None:
        """Finish the running trials, start no other, then stop (SIGUSR1, ``agent --drain``)."""
        self._draining = True

    # ------------------------------------------------------------------ registry and drain

    def _drain_actors(self) -> bool:
        """Actors running a trial are asked (``ray.cancel``: a flag their loop reads after each
        trial) to stop after it; the others are released now. True once none is left."""
        if not self._drain_asked:
            self._drain_asked = True
            busy: dict[str, set[str]] = {}
            for slot in list(self.slots):
                if slot.study not in busy:
                    busy[slot.study] = with_storage_retry(running_actor_ids, self.storage, slot.study,
                                                          what="listing running trials")
                if slot.running is not None and slot.actor_id in busy[slot.study]:
                    self.ray.cancel(slot.running)
                else:
                    self._drop(slot)
                    self._requeue(slot, _HAND_BACK_REASON, "hand_back")  # one that claimed just now
        if self.slots:
            return False
        self._say("drained: every running trial finished, none handed back")
        return True

    def _wait(self) -> None:
        refs = self._refs()
        if refs:
            self.ray.wait(list(refs), num_returns=1, timeout=self.poll)
        else:
            self._stop.wait(self.poll)

    def _refs(self) -> dict[Any, tuple[ActorSlot, str]]:
        refs = {}
        for slot in self.slots:
            if slot.ready is not None:
                refs[slot.ready] = (slot, "where")
            if slot.running is not None:
                refs[slot.running] = (slot, "run")
        return refs

    # ------------------------------------------------------------------ what the actors answered

    def _collect(self) -> None:
        refs = self._refs()
        if not refs:
            return
        done, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in done:
            slot, kind = refs[ref]
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._lost(slot, exc, kind)
                continue
            except self.ray.exceptions.TaskCancelledError:  # drained: it finished its trial and stopped
                ran = with_storage_retry(finished_by_actor, self.storage, slot.study, slot.actor_id,
                                         what="counting an actor's trials")
                self._finished(slot, {"outcome": "drained", "ran": ran})
                continue
            except self.ray.exceptions.RayError as exc:  # not the actor's loss (cancelled, a system error)
                self._say(f"actor {slot.number} ({slot.study!r}): {_first_line(exc)}")
                self._drop(slot)
                continue
            if kind == "where":
                self._placed(slot, value)
            else:
                self._finished(slot, value)

    def _placed(self, slot: ActorSlot, info: dict[str, Any]) -> None:
        slot.ready = None
        first = not slot.placed
        slot.placed, slot.restarting = True, False
        slot.node, slot.node_ip, slot.actor_id = info["node"], info["node_ip"], info["actor"]
        if slot.lost_reason is not None:  # restarted: its old run is over, so are the trials it held
            self._requeue(slot, slot.lost_reason)
            slot.lost_reason = None
        if self._draining or not any(a.name == slot.study for a in self._active):
            self._drop(slot)  # its study ran out of work (or the driver drains) while it was being placed
            return
        cap = f", GPU memory cap {info['gpu_memory_mb']} MB" if info.get("gpu_memory_mb") else ""
        gpu = f" GPU {info['cuda_visible_devices']}" if self.use_gpus else ""
        self._say(f"actor {slot.number} {'placed' if first else 'restarted'} on node {slot.node_ip} "
                  f"({slot.node[:8]}){gpu}{cap}: study {slot.study!r}")
        slot.running = slot.handle.run.remote(slot.study)

    def _finished(self, slot: ActorSlot, result: dict[str, Any]) -> None:
        slot.running = None
        outcome = result.get("outcome")
        ran = int(result.get("ran", 0))
        self.summary.trials_run += ran
        if ran:
            where = f"{slot.node_ip} ({(slot.node or '?')[:8]})"
            self.summary.by_node[where] = self.summary.by_node.get(where, 0) + ran
        if outcome == "refused":
            self.scheduler.refuse(slot.study, f"on Ray node {slot.node_ip}: {result.get('reason')}")
        elif outcome in ("aborted", "outage"):
            self._say(f"actor {slot.number} stopped ({slot.study!r}): {result.get('reason')}")
        elif outcome == "drained":
            self._say(f"actor {slot.number} drained after {ran} trial(s) of {slot.study!r}")
        elif outcome == "error":
            self._say(f"actor {slot.number} failed ({slot.study!r}): {result.get('reason')}")
            _log.warning("actor %s traceback:\n%s", slot.number, result.get("traceback", ""))
        else:
            why = {"trials": "recycled", "memory": "recycled (memory)"}.get(result.get("recycled") or "", "released")
            self._say(f"actor {slot.number} {why} after {ran} trial(s) of {slot.study!r}")
        self._drop(slot)

    def _lost(self, slot: ActorSlot, exc: Exception, kind: str) -> None:
        """The actor's process (or its node) went away mid-call."""
        ray = self.ray
        if kind == "where":
            slot.ready = None
        else:
            slot.running = None
        if isinstance(exc, ray.exceptions.ActorDiedError) and exc.actor_init_failed:
            self._say(f"actor {slot.number} could not start ({slot.study!r}): {_first_line(exc)}")
            self._drop(slot)
            return
        restarting = not isinstance(exc, ray.exceptions.ActorDiedError)
        if kind == "where" and slot.restarting and restarting:
            slot.ask_at = time.monotonic() + self.poll  # still being restarted (no node has room yet): ask again
            return
        self.summary.actors_lost += 1
        node_gone = slot.node is not None and slot.node not in self._alive_nodes()
        why = f"its node {slot.node_ip} ({slot.node[:8]}) left the cluster" if node_gone and slot.node else \
            "its process died"
        reason = f"Ray actor lost: {why}"
        self._say(f"actor {slot.number} lost ({slot.study!r}): {why}; "
                  + ("Ray restarts it where resources allow" if restarting else "Ray will not restart it"))
        if node_gone or not restarting:
            self._requeue(slot, reason)  # no process of it can still be running those trials
        else:
            slot.lost_reason = reason  # re-queued once the restarted actor answers
        if restarting:
            slot.restarting = True
            slot.ready = slot.handle.where.remote()
        else:
            self._drop(slot)

    def _requeue(self, slot: ActorSlot, reason: str, kind: str = "crash") -> None:
        if slot.actor_id is None:  # never placed: it claimed nothing
            return
        numbers = with_storage_retry(self.scheduler.requeue_trials, slot.study, {RAY_ACTOR: slot.actor_id}, reason,
                                     kind=kind, what="re-queueing a lost actor's trials")
        if numbers:
            self.summary.requeued += numbers
            what = "handed back" if kind == "hand_back" else "re-queued"
            self._say(f"actor {slot.number}: trial(s) {', '.join(map(str, numbers))} of {slot.study!r} {what}")

    # ------------------------------------------------------------------ elastic: add and release actors

    def _release(self) -> None:
        """Actors still waiting for a node (new, or restarting after a loss) whose study needs
        them no more: kill them, so they hold no resource request (an autoscaler scales down)."""
        wanted = {a.name for a in self._active}
        for slot in list(self.slots):
            waiting = slot.ready is not None or slot.restarting
            if waiting and slot.study not in wanted:
                if slot.lost_reason is not None:
                    self._requeue(slot, slot.lost_reason)
                self._drop(slot)

    def _ask_restarting(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restarting and slot.ready is None and now >= slot.ask_at:
                slot.ready = slot.handle.where.remote()

    def _fill(self) -> None:
        if not self._active or any(s.ready is not None and not s.placed for s in self.slots):
            return  # nothing to do, or our last actors are still being placed
        n = self._free_slots(self.ray.available_resources())
        wanted = {a.name: a.claimable - self._idle(a.name) for a in self._active}
        if not any(w > 0 for w in wanted.values()):
            return
        load = count_by(s.study for s in self.slots)
        # No room: still ask for one more actor. It waits for a slot (placed the moment any frees
        # up or a node joins) and tells an autoscaler that the cluster is too small.
        for _ in range(max(n, 1)):
            study = self.scheduler.choose([a for a in self._active if wanted[a.name] > 0], load)
            if study is None:
                break
            self._start(study)
            load[study] = load.get(study, 0) + 1
            wanted[study] -= 1

    def _free_slots(self, free: dict[str, float]) -> int:
        """How many more actors the cluster's free resources hold now."""
        if not self._said_shape:
            self._said_shape = True
            self._say(f"GPU slots: {1 / self.trials_per_gpu:.4g} GPU and {self._cpus():g} CPU per actor"
                      if self.use_gpus else f"CPU slots: {self._cpus():g} CPU per actor, no GPU")
        eps = 1e-6
        cpus = self._cpus()
        by_cpu = math.floor(free.get("CPU", 0) / cpus + eps) if cpus > 0 else 1_000_000
        if not self.use_gpus:
            return by_cpu
        if not self._no_gpu_warned and not self.ray.cluster_resources().get("GPU", 0):
            self._no_gpu_warned = True
            self._say("the cluster has no GPU now: GPU actors wait for a GPU node (an autoscaler adds one); "
                      "for CPU actors use --gpus none")
        return min(by_cpu, math.floor(free.get("GPU", 0) * self.trials_per_gpu + eps))

    def _cpus(self) -> float:
        return 1.0 if self.cpus_per_trial is None else float(self.cpus_per_trial)

    def _idle(self, study: str) -> int:
        """Our actors on ``study`` not running a trial of it now (starting, or between trials):
        each will claim one, so the study needs that many fewer new actors."""
        ours = [s for s in self.slots if s.study == study]
        if not ours:
            return 0
        busy = with_storage_retry(running_actor_ids, self.storage, study, what="listing running trials")
        return sum(1 for s in ours if s.actor_id not in busy)

    def _start(self, study: str) -> None:
        gpu = self.use_gpus
        cpus = self._cpus()
        threads = max(1, int(cpus)) if (not gpu or self.cpus_per_trial) and cpus >= 1 else None
        settings = ActorSettings(url=StorageURL(self.url), gpu=gpu, trials_per_gpu=self.trials_per_gpu,
                                 threads=threads, max_trials=self.max_trials_per_runner,
                                 memory_limit_mb=self.memory_limit_mb, env=forwarded_env(os.environ),
                                 workdir=os.getcwd())
        handle = self._actor_class.options(
            num_cpus=cpus, num_gpus=(1 / self.trials_per_gpu) if gpu else 0,
            max_restarts=-1, max_task_retries=0,
        ).remote(settings)
        self.summary.actors_started += 1
        slot = ActorSlot(handle=handle, study=study, number=self.summary.actors_started)
        slot.ready = handle.where.remote()
        self.slots.append(slot)

    def _drop(self, slot: ActorSlot) -> None:
        """Kill the actor (never restarted) and forget it: its resources go back to the cluster."""
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception as exc:  # already gone
            _log.debug("killing actor %s: %s", slot.number, exc)
        if slot in self.slots:
            self.slots.remove(slot)

    # ------------------------------------------------------------------ nodes

    def _alive_nodes(self) -> dict[str, str]:
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in self.ray.nodes() if n.get("Alive")}

    def _watch_nodes(self) -> None:
        alive = self._alive_nodes()
        if self._nodes:
            for node, ip in alive.items():
                if node not in self._nodes:
                    self._say(f"Ray node {ip} ({node[:8]}) joined")
            for node, ip in self._nodes.items():
                if node not in alive:
                    self._say(f"Ray node {ip} ({node[:8]}) left")
        self._nodes = alive

    # ------------------------------------------------------------------ stopping

    def shutdown(self, grace: float = 30.0) -> None:
        """Kill every actor and hand the trials they were running back."""
        if self.ray is None:
            return
        slots = list(self.slots)
        refs = [r for s in slots for r in (s.ready, s.running) if r is not None]
        for slot in slots:
            try:
                self.ray.kill(slot.handle, no_restart=True)
            except Exception as exc:
                _log.debug("killing actor %s: %s", slot.number, exc)
        if refs:  # the calls fail once the actors are gone: then no process runs their trials
            self.ray.wait(refs, num_returns=len(refs), timeout=grace)
        for slot in slots:
            self._requeue(slot, _HAND_BACK_REASON, "hand_back")
            self.slots.remove(slot)
        s = self.summary
        nodes = ", ".join(f"{ip}: {n}" for ip, n in sorted(s.by_node.items())) or "none"
        self._say(f"Ray driver stopped: {s.actors_started} actor(s) started, {s.actors_lost} lost, "
                  f"{s.trials_run} trial(s) run (by node: {nodes})")

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        _log.info(text)


def running_actor_ids(storage: Any, study_name: str) -> set[str]:
    """The ``ray_actor`` of every RUNNING trial of ``study_name`` (one read)."""
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import select

    from tuner_service.lifecycle import _sql

    study_id = storage.get_study_id_from_name(study_name)
    t, ua = models.TrialModel, models.TrialUserAttributeModel
    with _sql.read(storage) as session:
        rows = session.execute(select(ua.value_json).select_from(t).join(ua, ua.trial_id == t.trial_id).where(
            t.study_id == study_id, t.state == TrialState.RUNNING, ua.key == RAY_ACTOR)).all()
    return {json.loads(r[0]) for r in rows}


def finished_by_actor(storage: Any, study_name: str, actor_id: str | None) -> int:
    """How many trials of ``study_name`` the actor ran to an end (its run's own count is lost
    when the run is cancelled by a drain)."""
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import func, select

    from tuner_service.lifecycle import _sql

    if actor_id is None:
        return 0
    study_id = storage.get_study_id_from_name(study_name)
    t, ua = models.TrialModel, models.TrialUserAttributeModel
    with _sql.read(storage) as session:
        return int(session.execute(select(func.count()).select_from(t).join(ua, ua.trial_id == t.trial_id).where(
            t.study_id == study_id, t.state.in_([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]),
            ua.key == RAY_ACTOR, ua.value_json == json.dumps(actor_id))).scalar() or 0)


def _first_line(exc: BaseException) -> str:
    text = mask_password(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------- entry points


def run_ray_agent(storage_url: str | None, address: str, *, gpus: str, trials_per_gpu: int,
                  cpus_per_trial: float | None, studies: list[str], max_trials_per_runner: int,
                  memory_limit_mb: int | None, once: bool, console: Console | None) -> Summary:
    """``tuner-service agent --ray ADDRESS``."""
    import_ray()  # first: without Ray, that is the one thing to say
    executor = RayExecutor(storage_url, address, gpus=gpus, trials_per_gpu=trials_per_gpu,
                           cpus_per_trial=cpus_per_trial, studies=studies,
                           max_trials_per_runner=max_trials_per_runner, memory_limit_mb=memory_limit_mb,
                           console=console)
    return executor.run(once=once)


def run_study(study: optuna.Study, spec: StudySpec, url: str, address: str, *, trials_per_gpu: int = 1,
              cpus_per_trial: float | None = None, console: Console | None = None) -> Any:
    """``submit ... --ray ADDRESS``: run one registered study on the cluster with a progress
    bar, then report its best trial (as ``submit --workers`` does with local processes)."""
    from tuner_service import service

    executor = RayExecutor(url, address, trials_per_gpu=trials_per_gpu, cpus_per_trial=cpus_per_trial,
                           studies=[spec.name], console=console)
    stop = threading.Event()
    progress = threading.Thread(target=service._follow, args=(study, spec, stop, console), daemon=True)
    progress.start()
    try:
        executor.run(once=True)
    finally:
        stop.set()
        progress.join()
    counts = service._counts_at_end(study, spec)
    if spec.name in executor.scheduler.refused:
        raise BadInput(f"study {spec.name!r} was not run: {executor.scheduler.refused[spec.name].reason}")
    service._report_best(study, spec, url, counts, console)
    return counts


