"""The agent: one long-running process per machine that keeps every GPU slot busy.

It never imports TensorFlow. It detects GPUs with ``nvidia-smi`` (or honours
``CUDA_VISIBLE_DEVICES``), makes K slots per GPU (or N CPU slots), and starts one *runner*
per slot: a ``tuner_service.worker`` subprocess pinned with ``CUDA_VISIBLE_DEVICES`` before
Keras is imported, with memory growth on and, when several runners share a GPU, a memory
cap. A runner serves up to ``--recycle-after`` trials of one study (imports and data paid
once), then exits so its GPU memory is really returned; the agent then gives the slot to
whichever study should have it next:

- highest ``priority`` first, then FIFO by submission;
- among studies of equal priority, the one with the fewest runners now (fair share).

Each slot also keeps a *standby* runner (``--standby``, default on): a runner process started
in advance that has imported Keras and waits for its study (:mod:`tuner_service.worker`). When
the slot's runner exits (its study is done, or it recycled), the standby runner takes the next
study at once and a new standby is started behind it, so a study switch or a recycle does not
wait for TensorFlow's import. Standby runners are started one at a time, and only while no
other runner of this agent is still importing, so they never compete with a runner's own
start; the agent knows a runner has imported when it says ``ready`` on its stdout pipe.

A runner exits as soon as its study has nothing claimable (no WAITING trial, no budget slot),
even while other trials of that study still run elsewhere: the slot goes to the next study at
once. The agent checks every study's heartbeats (also of studies with no budget left, whose
runners no longer look), so a trial that dies anywhere is re-queued and served again.

A runner that dies mid-trial (segfault, OOM kill, SIGKILL) costs only that trial: the agent
fails it at once and re-queues its parameters in one transaction (the lifecycle's crash
arrow, without waiting for the heartbeat grace that covers a lost machine), then starts a new
runner. On SIGINT/SIGTERM the agent asks every runner to stop; runners hand their running
trials back (re-queued) and exit.

GPU busy time per study: every ``TUNER_SERVICE_GPU_SAMPLE`` seconds (default 5) the agent reads
nvidia-smi's utilisation of each GPU its runners use and credits it to every study with a runner
on that GPU (a GPU shared by two studies' runners counts for both); the totals go to the study's
user attr ``gpu_busy:<host>`` every 30 s and when the agent stops, and ``tuner-service status``
shows them.

A study this machine cannot serve (its model source differs, a file its spec names is
missing here, it belongs to the keras-tuner API) is *refused*: logged once with the study's
name and the reason, recorded in the study (``tuner-service status`` shows it), left alone,
and checked again every ``TUNER_SERVICE_REFUSAL_RECHECK`` seconds (default 30), so a fixed
checkout or a resubmitted study is served without restarting the agent. The check runs in the
agent itself (it imports no Keras), before any runner is started for the study.

Choosing studies, refusals, liveness checks and the crash arrow for a dead runner's trials are
:mod:`tuner_service.scheduling`'s, shared with the Ray executor
(:mod:`tuner_service.ray_executor`), which keeps runner *actors* busy on a Ray cluster the
same way this agent keeps runner processes busy on one machine.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service.errors import BadInput
from tuner_service.registry import Membership, RegistryMember
from tuner_service.scheduling import (  # noqa: F401  (REFUSAL_RECHECK_SECONDS, REFUSED_ATTR_PREFIX: re-exported)
    GPU_SHARE,
    REFUSAL_RECHECK_SECONDS,
    REFUSED_ATTR_PREFIX,
    ActiveStudy,
    Scheduler,
    count_by,
    gpu_activity,
    gpu_memory_mb,
    runner_env,
)
from tuner_service.storage import mask_password, open_storage, resolve_url, with_storage_retry

if TYPE_CHECKING:
    from rich.console import Console

_log = logging.getLogger(__name__)
POLL_SECONDS = float(os.environ.get("TUNER_SERVICE_AGENT_POLL", "1.0"))
GPU_SAMPLE_SECONDS = float(os.environ.get("TUNER_SERVICE_GPU_SAMPLE", "5"))
GPU_WRITE_SECONDS = 30.0
STANDBY_RETRY_SECONDS = 60.0  # after a standby runner dies before it is used, wait this long for the next


@dataclass
class Slot:
    label: str  # "gpu0/1" or "cpu/0"
    cuda_visible_devices: str  # "" hides every GPU
    memory_mb: int | None = None  # per-runner GPU memory cap when a GPU is shared
    runner: subprocess.Popen[bytes] | None = None
    log: Any = None
    retrain: dict[str, Any] | None = None  # the retrain request this slot runs, if any
    study: str | None = None
    started: float = 0.0
    draining: bool = False
    standby: subprocess.Popen[bytes] | None = None  # started in advance, waiting for its study
    standby_log: Any = None
    standby_failed_at: float = 0.0


@dataclass
class AgentState:
    runners_started: int = 0


class GpuBusy:
    """GPU busy time per study on this machine (module doc): sampled, credited, written."""

    def __init__(self, host: str) -> None:
        self.key = A.GPU_BUSY_PREFIX + host
        self.own: dict[str, dict[str, Any]] = {}  # study -> totals since this agent started
        self.before: dict[str, dict[str, Any]] = {}  # study -> what earlier agents on this host wrote
        self.sampled_at = self.written_at = time.monotonic()

    def tick(self, slots: list[Slot], storage: Any) -> None:
        now = time.monotonic()
        if now - self.sampled_at >= GPU_SAMPLE_SECONDS:
            self.sampled_at = now
            self.sample(slots)
        if now - self.written_at >= GPU_WRITE_SECONDS:
            self.write(storage)

    def sample(self, slots: list[Slot]) -> None:
        on_gpu: dict[str, set[str]] = {}
        for slot in slots:
            if slot.runner is not None and slot.study and slot.cuda_visible_devices and slot.retrain is None:
                on_gpu.setdefault(slot.cuda_visible_devices, set()).add(slot.study)
        activity = gpu_activity() if on_gpu else {}
        for gpu, studies in on_gpu.items():
            if gpu not in activity:
                continue
            busy, memory = activity[gpu]
            for study in studies:
                t = self.own.setdefault(study, {"samples": 0, "busy_sum": 0.0, "memory_mb_max": 0.0, "gpus": set()})
                t["samples"] += 1
                t["busy_sum"] += busy
                t["memory_mb_max"] = max(t["memory_mb_max"], memory)
                t["gpus"].add(gpu)

    def write(self, storage: Any) -> None:
        """Each study's totals (earlier agents' on this host included) into its user attr."""
        self.written_at = time.monotonic()
        for study, t in self.own.items():
            try:
                sid = storage.get_study_id_from_name(study)
            except KeyError:  # deleted meanwhile
                continue
            if study not in self.before:
                self.before[study] = storage.get_study_user_attrs(sid).get(self.key) or {}
            b = self.before[study]
            samples = b.get("samples", 0) + t["samples"]
            busy_sum = b.get("busy_pct", 0.0) * b.get("samples", 0) + t["busy_sum"]
            storage.set_study_user_attr(sid, self.key, {
                "busy_pct": round(busy_sum / samples, 1), "samples": samples, "every_s": GPU_SAMPLE_SECONDS,
                "busy_gpu_s": round(b.get("busy_gpu_s", 0.0) + t["busy_sum"] / 100 * GPU_SAMPLE_SECONDS, 1),
                "memory_used_mb_max": max(b.get("memory_used_mb_max", 0), t["memory_mb_max"]),
                "gpus": ",".join(sorted(set(str(b.get("gpus", "")).split(",")) - {""} | t["gpus"]))})


def _read_and_close(log: Any) -> str:
    """What a runner wrote to its log file (``""`` without one); the file is closed."""
    if log is None:
        return ""
    log.seek(0)
    text = log.read().decode(errors="replace")
    log.close()
    return text


def detect_gpus(spec: str) -> list[str]:
    """GPU ids from ``--gpus`` (``all`` | ``none`` | ``0,1``), without importing a framework."""
    spec = spec.strip().lower()
    if spec == "none":
        return []
    if spec != "all":
        ids = [g.strip() for g in spec.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids):
            raise BadInput(f"--gpus {spec!r} is not valid; use all, none or a list like 0,1")
        return ids
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def make_slots(gpus: list[str], trials_per_gpu: int, cpu_slots: int | None) -> list[Slot]:
    if not gpus:
        return [Slot(label=f"cpu/{i}", cuda_visible_devices="") for i in range(cpu_slots or 1)]
    slots = []
    for g in gpus:
        total = gpu_memory_mb(g) if trials_per_gpu > 1 else None
        cap = int(total * GPU_SHARE / trials_per_gpu) if total else None
        slots += [Slot(label=f"gpu{g}/{k}", cuda_visible_devices=g, memory_mb=cap) for k in range(trials_per_gpu)]
    return slots


class Agent(RegistryMember):
    def __init__(self, storage_url: str | None, slots: list[Slot], *, studies: list[str] | None = None,
                 max_trials_per_runner: int = 50, memory_limit_mb: int | None = None,
                 console: Console | None = None, standby: bool = True) -> None:
        self.url = resolve_url(storage_url)
        self.storage = with_storage_retry(open_storage, self.url, create=False, what="opening the storage")
        self.slots = slots
        self.only = set(studies or [])
        self.max_trials_per_runner = max_trials_per_runner
        self.memory_limit_mb = memory_limit_mb
        self.standby = standby
        self._imported: set[int] = set()  # pids of runner processes that said "ready"
        self.console = console
        self.state = AgentState()
        self._stopping = False
        self._draining = False
        self.host = socket.gethostname()
        self.membership = Membership(self.storage, self.host, len(self.slots))
        self.gpu_busy = GpuBusy(self.host)
        self.scheduler = Scheduler(self.storage, only=self.only, host=self.host, say=self._say)

    # ------------------------------------------------------------------ scheduling (tuner_service.scheduling)

    def active_studies(self) -> list[ActiveStudy]:
        """The studies this machine can serve that have something claimable, best first.
        Checks every study's heartbeats on the way."""
        return self.scheduler.active_studies()

    def choose(self, active: list[ActiveStudy]) -> str | None:
        return self.scheduler.choose(active, count_by(s.study for s in self.slots if s.runner is not None))

    def _refuse(self, name: str, reason: str) -> None:
        self.scheduler.refuse(name, reason)

    # ------------------------------------------------------------------ runners

    def _slot_env(self, slot: Slot) -> dict[str, str]:
        """Pinning and memory settings for a process in ``slot`` (:func:`scheduling.runner_env`),
        set before it imports Keras. The storage URL travels in the environment: a password in
        argv is visible in `ps`. Variables already set in the agent's environment win."""
        sharing = sum(1 for s in self.slots if s.cuda_visible_devices == slot.cuda_visible_devices)
        return runner_env({**os.environ, "TUNER_SERVICE_STORAGE": self.url},
                          cuda_visible_devices=slot.cuda_visible_devices, memory_mb=slot.memory_mb, sharing=sharing)

    def _spawn(self, slot: Slot) -> tuple[subprocess.Popen[bytes], Any]:
        """A runner process for ``slot`` in standby mode (it imports Keras, says ``ready`` on its
        stdout pipe, then reads its study from stdin; see :mod:`tuner_service.worker`)."""
        cmd = [sys.executable, "-m", "tuner_service.worker", "--standby", "--slot", slot.label,
               "--max-trials", str(self.max_trials_per_runner)]
        if self.memory_limit_mb:
            cmd += ["--memory-limit-mb", str(self.memory_limit_mb)]
        if not slot.cuda_visible_devices:
            cmd += ["--threads", str(max(1, (os.cpu_count() or 1) // len(self.slots)))]
        # Output goes to a file, not a pipe: a chatty runner must never block on a full pipe.
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, env=self._slot_env(slot), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log)
        return proc, log

    def _has_imported(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether ``proc`` is past its imports (it said ``ready``, or it exited). A retrain (no
        pipe) counts as imported: it is a long job, not a start to keep clear of."""
        if proc.pid in self._imported or proc.stdout is None or proc.stdout.closed:
            return True
        if select.select([proc.stdout], [], [], 0)[0]:
            proc.stdout.readline()  # "ready", or b"" when it exited first
            proc.stdout.close()
            self._imported.add(proc.pid)
            return True
        return False

    def start_runner(self, slot: Slot, study: str) -> None:
        # A distinct sampler stream per runner, on every machine and after every recycle.
        self.state.runners_started += 1
        index = zlib.crc32(f"{self.host}/{slot.label}/{os.getpid()}/{self.state.runners_started}".encode()) % 1_000_003
        proc, slot.standby = slot.standby, None
        waited = proc is not None and proc.poll() is None
        if waited:
            log, slot.standby_log = slot.standby_log, None
        else:
            self._discard_standby(slot, proc)
            proc, log = self._spawn(slot)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"study": study, "index": index}).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:  # it died just now: reaped as any runner that exits
            pass
        slot.runner, slot.log = proc, log
        slot.study, slot.started = study, time.time()
        self._say(f"slot {slot.label}: runner pid {proc.pid} on study {study!r}"
                  + (" (its standby runner, started in advance)" if waited else ""))

    def _discard_standby(self, slot: Slot, proc: subprocess.Popen[bytes] | None) -> None:
        """Forget a standby runner that died before it was given a study (say why, once)."""
        if proc is None:
            return
        output, slot.standby_log = _read_and_close(slot.standby_log).strip(), None
        slot.standby_failed_at = time.time()
        self._imported.discard(proc.pid)
        last = output.splitlines()[-1] if output else f"exit {proc.returncode}"
        self._say(f"slot {slot.label}: standby runner pid {proc.pid} exited before it had a study: "
                  f"{mask_password(last)}")

    def top_up_standby(self) -> None:
        """Start one standby runner for the first slot without one, unless a runner of this agent
        is still importing (they would compete for the same cores) or one failed recently."""
        if not self.standby:
            return
        procs = [p for s in self.slots for p in (s.runner, s.standby) if p is not None]
        if not all(self._has_imported(p) for p in procs):
            return
        now = time.time()
        for slot in self.slots:
            if slot.standby is not None and slot.standby.poll() is not None:
                proc, slot.standby = slot.standby, None
                self._discard_standby(slot, proc)
            if slot.standby is None and now - slot.standby_failed_at > STANDBY_RETRY_SECONDS:
                slot.standby, slot.standby_log = self._spawn(slot)
                self._say(f"slot {slot.label}: standby runner pid {slot.standby.pid} started")
                return

    def stop_standby(self) -> None:
        """End every standby runner (they hold no trial): SIGTERM, and wait."""
        for slot in self.slots:
            proc, slot.standby = slot.standby, None
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for f in (proc.stdin, proc.stdout, slot.standby_log):
                if f is not None and not f.closed:
                    f.close()
            slot.standby_log = None
            self._imported.discard(proc.pid)

    def pending_retrains(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Requests waiting for a slot: pending ones, and running ones whose agent stopped
        refreshing them (taken over: the retrain starts again here)."""
        from tuner_service.retrain import REQUEST_ATTR, request_is_stale

        out = []
        for s in self.storage.get_all_studies():
            request = s.user_attrs.get(REQUEST_ATTR)
            if not request or (self.only and s.study_name not in self.only):
                continue
            if request.get("status") == "pending" or request_is_stale(request):
                out.append((s._study_id, s.study_name, request))
        return out

    def beat_retrains(self) -> None:
        """Refresh ``beat_at`` of the retrain requests this agent runs, so others see them alive."""
        from tuner_service.retrain import REQUEST_ATTR, REQUEST_BEAT_SECONDS, compare_and_set_study_user_attr

        now = time.time()
        for slot in self.slots:
            if slot.retrain is None or now - slot.retrain.get("beat_at", 0) < REQUEST_BEAT_SECONDS:
                continue
            current = {k: v for k, v in slot.retrain.items() if k != "study_id"}
            if compare_and_set_study_user_attr(self.storage, slot.retrain["study_id"], REQUEST_ATTR, current,
                                               {**current, "beat_at": now}):
                slot.retrain["beat_at"] = now

    def start_retrain(self, slot: Slot, study_id: int, study: str, request: dict[str, Any]) -> bool:
        """Claim a pending ``retrain --on-agent`` request (atomically) and run it in ``slot``."""
        from tuner_service.retrain import REQUEST_ATTR, compare_and_set_study_user_attr

        running = {**request, "status": "running", "host": self.host, "slot": slot.label,
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "beat_at": time.time()}
        if request.get("status") == "running":  # stale: its agent died mid-retrain
            running["taken_over_from"] = f"{request.get('host')} slot {request.get('slot')}"
        if not compare_and_set_study_user_attr(self.storage, study_id, REQUEST_ATTR, request, running):
            return False  # another agent took it
        cmd = [sys.executable, "-m", "tuner_service", "retrain", study, "--epochs", str(request["epochs"]),
               "--output", request["output"], "--seeds", str(request["seeds"])]
        if request.get("trial") is not None:
            cmd += ["--trial", str(request["trial"])]
        slot.log = tempfile.TemporaryFile()
        slot.runner = subprocess.Popen(cmd, env=self._slot_env(slot), stdout=slot.log, stderr=subprocess.STDOUT)
        slot.study, slot.started, slot.retrain = study, time.time(), {**running, "study_id": study_id}
        again = f", taken over from {running['taken_over_from']}" if "taken_over_from" in running else ""
        self._say(f"slot {slot.label}: retraining {study!r} (pid {slot.runner.pid}{again})")
        return True

    def _finish_retrain(self, slot: Slot, code: int | None, output: str) -> None:
        from tuner_service.retrain import REQUEST_ATTR, compare_and_set_study_user_attr

        running = {k: v for k, v in (slot.retrain or {}).items() if k != "study_id"}
        final = {**running, "status": "done" if code == 0 else "failed"}
        if code != 0:
            lines = [line for line in output.strip().splitlines() if line.strip()]
            final["error"] = mask_password(lines[-1] if lines else f"exit code {code}")
        compare_and_set_study_user_attr(self.storage, slot.retrain["study_id"], REQUEST_ATTR, running, final)
        self._say(f"slot {slot.label}: retrain of {slot.study!r} {final['status']}")
        slot.runner, slot.study, slot.retrain, slot.draining = None, None, None, False

    def reap(self, slot: Slot) -> None:
        """Handle a finished runner: re-queue a trial it died in; remember refusals."""
        proc = slot.runner
        assert proc is not None
        code = proc.returncode
        self._imported.discard(proc.pid)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
        output, slot.log = _read_and_close(slot.log), None
        if slot.retrain is not None:
            self._finish_retrain(slot, code, output)
            return
        if code in (2, 5) and slot.study:  # refused (or bad input): e.g. the local code differs
            reason = output.strip().splitlines()[-1] if output.strip() else "runner refused the study"
            self._refuse(slot.study, reason.removeprefix("error: "))
        elif code == 4:  # the storage went away; the runner's trial is re-queued by its heartbeat
            self._say(f"slot {slot.label}: runner pid {proc.pid} stopped on a storage outage")
        elif code not in (0, None) and code != 3:
            self._say(f"slot {slot.label}: runner pid {proc.pid} died (exit {code}); re-queueing its trial")
            self.requeue_trials_of(proc.pid, slot.study, f"runner process died (exit {code})")
        slot.runner, slot.study, slot.draining = None, None, False

    def requeue_trials_of(self, pid: int, study_name: str | None, reason: str) -> None:
        """The lifecycle's crash arrow for the trials a dead runner of this host held."""
        self.scheduler.requeue_trials(study_name, {A.PID: pid, A.HOST: self.host}, reason)

    # ------------------------------------------------------------------ main loop

    def run(self, *, once: bool = False) -> None:
        def stop(signum: int, _frame: Any) -> None:
            self._stopping = True

        def drain(signum: int, _frame: Any) -> None:
            self._draining = True

        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, drain)
        # A runner's exit (SIGCHLD) or a stop request wakes the loop at once instead of at the next
        # poll: the slot's next runner starts within the second. Interrupted system calls restart.
        old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.siginterrupt(signal.SIGCHLD, False)
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

        def idle() -> None:
            # ... and so does a runner saying "ready" (the next standby may start). The line is
            # read here, so a pipe never stays readable and the loop never spins on it.
            procs = [p for s in self.slots for p in (s.runner, s.standby)
                     if p is not None and p.stdout is not None and not p.stdout.closed]
            readable = select.select([wake_r, *(p.stdout for p in procs)], [], [], POLL_SECONDS)[0]
            for p in procs:
                if p.stdout in readable:
                    self._has_imported(p)
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass

        self._say(f"agent on {self.host}: {len(self.slots)} slot(s) "
                  f"[{', '.join(s.label for s in self.slots)}], storage {mask_password(self.url)}")
        try:
            while not self._stopping:
                for slot in self.slots:
                    if slot.runner is not None and slot.runner.poll() is not None:
                        with_storage_retry(self.reap, slot, what="handling a finished runner")
                # A database outage pauses scheduling (runners wait on their own); it is not fatal.
                self._beat_registry()
                if self._draining:
                    self.stop_standby()
                    if self._drain_runners():
                        break
                    idle()
                    continue
                with_storage_retry(self.beat_retrains, what="refreshing retrain requests")
                retrains = with_storage_retry(self.pending_retrains, what="listing retrain requests")
                active = with_storage_retry(self.active_studies, what="listing studies")
                for slot in self.slots:
                    if slot.runner is not None or self._stopping:
                        continue
                    # A retrain first: somebody is waiting for it.
                    while retrains and slot.runner is None:
                        with_storage_retry(self.start_retrain, slot, *retrains.pop(0), what="claiming a retrain")
                    if slot.runner is None:
                        study = self.choose(active)
                        if study is not None:
                            self.start_runner(slot, study)
                if once and not active and not retrains and all(s.runner is None for s in self.slots):
                    break
                if not self._stopping:
                    self.top_up_standby()
                with_storage_retry(self.gpu_busy.tick, self.slots, self.storage, what="recording GPU busy time")
                idle()
        finally:
            self.shutdown()
            self._leave_registry()
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ registry and drain

    def _drain_runners(self) -> bool:
        """Ask every runner to finish its trial and stop (SIGUSR1); True once none is left."""
        for slot in self.slots:
            if slot.runner is not None and slot.runner.poll() is None and not slot.draining:
                slot.draining = True
                if slot.retrain is None:  # a retrain runs to its end anyway
                    slot.runner.send_signal(signal.SIGUSR1)
        if all(slot.runner is None for slot in self.slots):
            self._say("drained: every running trial finished, none handed back")
            return True
        return False

    def shutdown(self, grace: float = 30.0) -> None:
        self.stop_standby()
        running = [s for s in self.slots if s.runner is not None and s.runner.poll() is None]
        for s in running:
            s.runner.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        for s in running:
            try:
                s.runner.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                s.runner.kill()  # type: ignore[union-attr]
                s.runner.wait()  # type: ignore[union-attr]
        for s in self.slots:
            if s.runner is not None:
                self.reap(s)
        try:  # best effort: a stopping agent does not wait out a database outage for it
            self.gpu_busy.write(self.storage)
        except Exception as exc:
            _log.warning("GPU busy time not recorded: %s", mask_password(str(exc)))
        self._say("agent stopped")

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
        _log.info(text)


def run_agent(storage_url: str | None, *, gpus: str, trials_per_gpu: int, slots: int | None, studies: list[str],
              max_trials_per_runner: int, memory_limit_mb: int | None, once: bool, console: Console | None,
              standby: bool = True) -> None:
    ids = detect_gpus(gpus)
    if slots is not None and ids:
        raise BadInput("--slots is for CPU slots; use it with --gpus none (GPU slots come from --trials-per-gpu)")
    agent = Agent(storage_url, make_slots(ids, trials_per_gpu, slots), studies=studies,
                  max_trials_per_runner=max_trials_per_runner, memory_limit_mb=memory_limit_mb, console=console,
                  standby=standby)
    agent.run(once=once)
