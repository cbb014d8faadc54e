"""What runs inside one runner actor on a Ray cluster: a :class:`~tuner_service.worker.Worker`
(the lifecycle's claim -> run -> record loop) serving one study.

The driver (:mod:`tuner_service.ray_executor`) turns :class:`RunnerActor` into a Ray actor with
``ray.remote`` and the resources of one slot (``num_gpus=1/K`` or ``num_cpus=C``); Ray places it
and, for a GPU slot, sets ``CUDA_VISIBLE_DEVICES`` before the actor's code runs. The actor
claims trials from the study's storage exactly as an agent's runner process does: the storage
is the queue, Ray only places and runs the process.

Ray imports this module in every actor process (the class travels by reference), so it imports
nothing of the service at module level: the driver's ``TUNER_SERVICE_*`` settings (heartbeat
interval and grace, retry limits...), the GPU pinning and the per-runner memory caps must be in
the environment before :mod:`tuner_service.lifecycle` or Keras are imported. The storage URL is
not in that environment (Ray shows an actor's environment on its dashboard): it travels as a
:class:`StorageURL`, an argument whose ``repr`` masks the password.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

#: Trial user attrs a Ray actor adds to the run attrs of every claim (with host, pid, slot and
#: CUDA_VISIBLE_DEVICES, which every agent runner records).
RAY_NODE = "ray_node"  # the Ray node id (hex): local test clusters run every node on one host
RAY_ACTOR = "ray_actor"  # the actor id (hex): how the driver finds the trials of a lost actor


class StorageURL:
    """A storage URL that never shows its password: ``repr``/``str`` mask it, so Ray's logs,
    error messages and a debugger print the masked form. :meth:`reveal` gives the URL."""

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        self._url = url

    def reveal(self) -> str:
        return self._url

    def __repr__(self) -> str:
        from tuner_service.storage import mask_password

        return f"StorageURL({mask_password(self._url)!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (StorageURL, (self._url,))


@dataclass(frozen=True)
class ActorSettings:
    """What every runner actor of one driver shares (sent once per actor, pickled)."""

    url: StorageURL
    gpu: bool  # a GPU slot (Ray assigned a GPU share) or a CPU slot (every GPU hidden)
    trials_per_gpu: int = 1
    threads: int | None = None  # TensorFlow/OpenMP threads (CPU slots: the CPUs Ray reserved)
    max_trials: int | None = None  # recycle: the actor serves this many trials, then the driver replaces it
    memory_limit_mb: int | None = None  # ... or it stops once its resident memory exceeds this
    env: dict[str, str] = field(default_factory=dict)  # the driver's TUNER_SERVICE_* settings (no secrets)
    #: The driver's working directory: stored specs name model and data files relative to the
    #: directory `submit` ran in, so actors run there (as an agent's runners run in the agent's).
    workdir: str | None = None


class RunnerActor:
    """One runner slot on a Ray cluster. The driver calls :meth:`where` (answers once the actor
    is placed and idle) and :meth:`run` (serves one study until it has nothing claimable or the
    recycle limit is reached; returns what happened, never raises)."""

    def __init__(self, settings: ActorSettings) -> None:
        # Order matters: the driver's settings first (modules read them when imported), then the
        # slot's pinning and memory caps, then anything that may import Keras.
        os.environ.update(settings.env)
        if settings.workdir and os.path.isdir(settings.workdir):
            os.chdir(settings.workdir)
            if settings.workdir not in sys.path:  # `package.module:attr` models, as `python -m` finds them
                sys.path.insert(0, settings.workdir)
        from tuner_service.runners._env import process_defaults
        from tuner_service.scheduling import runner_env, shared_gpu_cap_mb

        self.settings = settings
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if settings.gpu else ""
        first = visible.split(",")[0].strip()
        self.gpu_memory_mb = shared_gpu_cap_mb(first, settings.trials_per_gpu) if settings.gpu and first else None
        os.environ.update(runner_env(os.environ, cuda_visible_devices=visible, memory_mb=self.gpu_memory_mb,
                                     sharing=settings.trials_per_gpu if settings.gpu else 1))
        process_defaults()
        self.slot = f"ray/gpu{visible}" if settings.gpu else "ray/cpu"
        self.runs = 0

    def where(self) -> dict[str, Any]:
        """Where this actor runs: node id and address, actor id, pid, GPU pinning and cap."""
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "actor": ctx.get_actor_id(),
                "pid": os.getpid(), "host": socket.gethostname(), "slot": self.slot, "workdir": os.getcwd(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "gpu_memory_mb": self.gpu_memory_mb}

    def run(self, study: str) -> dict[str, Any]:
        """Serve ``study`` with the lifecycle's loop; returns ``{"outcome": ..., "ran": N, ...}``
        with outcome ``done``, ``refused`` (this node cannot serve the study: the reason),
        ``aborted``, ``outage`` or ``error`` (a masked traceback)."""
        import ray

        from tuner_service.errors import BadInput, StorageOutage, StorageUnavailable, StudyAborted
        from tuner_service.storage import mask_password
        from tuner_service.worker import WorkerOptions

        ctx = ray.get_runtime_context()
        node, actor = ctx.get_node_id(), ctx.get_actor_id()
        self.runs += 1
        # A distinct sampler stream per actor, per restart and per recycled run.
        index = zlib.crc32(f"{actor}/{os.getpid()}/{self.runs}".encode()) % 1_000_003
        s = self.settings
        options = WorkerOptions(index=index, threads=s.threads, max_trials=s.max_trials,
                                memory_limit_mb=s.memory_limit_mb, slot=self.slot)
        received: list[int] = []
        previous: dict[int, Any] = {}
        try:
            worker = _actor_worker_class()(study, s.url.reveal(), options, ray_attrs={RAY_NODE: node, RAY_ACTOR: actor})
            previous = _hand_back_on_signals(worker, received)

            def drained(_state: str) -> None:
                # The driver drains with ray.cancel(this call): a flag read here, between trials.
                if ctx.is_canceled():
                    worker.stop()

            ran = worker.run(on_trial_done=drained)
        except (StorageOutage, StorageUnavailable) as exc:
            return {"outcome": "outage", "reason": mask_password(str(exc))}
        except StudyAborted as exc:
            return {"outcome": "aborted", "reason": mask_password(str(exc))}
        except BadInput as exc:  # Refused included: this node cannot serve the study
            return {"outcome": "refused", "reason": f"{mask_password(str(exc))} [working directory {os.getcwd()}]"}
        except Exception as exc:
            return {"outcome": "error", "reason": mask_password(f"{type(exc).__name__}: {exc}"),
                    "traceback": mask_password(traceback.format_exc()[-4000:])}
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if received:  # the node is shutting down: the trial was handed back; now let Ray end the process
                os.kill(os.getpid(), received[0])
        recycled = None  # why the loop stopped while the study may have work left
        if s.max_trials and ran >= s.max_trials:
            recycled = "trials"
        elif s.memory_limit_mb:
            from tuner_service.lifecycle import rss_mb

            recycled = "memory" if rss_mb() > s.memory_limit_mb else None
        return {"outcome": "done", "ran": ran, "recycled": recycled}


def _hand_back_on_signals(worker: Any, received: list[int]) -> dict[int, Any]:
    """While the worker runs: SIGTERM/SIGINT (a node shutting down, ``ray stop``) hand the
    running trial back, as in a plain worker; the signal is then passed on to Ray's own handler.
    (SIGUSR1, the worker's drain, is the worker's alone.)"""
    previous = worker.install_signal_handlers()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def record(signum: int, frame: Any) -> None:
        received.append(signum)
        handlers[signum](signum, frame)

    for signum in handlers:
        signal.signal(signum, record)
    return previous


_WORKER_CLASS: Any = None


def _actor_worker_class() -> Any:
    """A :class:`~tuner_service.worker.Worker` that also records the Ray node and actor with every
    claim (built on first use: importing the worker imports the lifecycle, which reads settings)."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        from tuner_service.worker import Worker

        class ActorWorker(Worker):
            def __init__(self, *args: Any, ray_attrs: dict[str, Any], **kwargs: Any) -> None:
                self._ray_attrs = ray_attrs
                super().__init__(*args, **kwargs)

            def _run_attrs(self) -> dict[str, Any]:
                return {**super()._run_attrs(), **self._ray_attrs}

        _WORKER_CLASS = ActorWorker
    return _WORKER_CLASS
