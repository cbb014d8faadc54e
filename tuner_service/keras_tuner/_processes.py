"""``search(..., workers=N)``: the same claim loop in N child processes of one search.

Children are started with ``python -c`` (not ``multiprocessing``, so the calling script needs
no ``if __name__ == "__main__"`` guard), each with ``cores // N`` TensorFlow threads, and
start claiming together once all have loaded. The tuner (hypermodel and oracle included) and
the non-array ``search()`` arguments travel with cloudpickle; every numpy array in them is
written once with ``np.save`` to ``{directory}/{project_name}/spill/<search>/`` and
memory-mapped read-only by each child, so N children share one copy through the page cache.
The folder is removed when the search ends.
"""

from __future__ import annotations

import inspect
import itertools
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tuner_service.errors import error_line

if TYPE_CHECKING:
    from tuner_service.keras_tuner._base import BaseTuner

_BARRIER_SECONDS = 120.0


class Unsupported(NotImplementedError):
    """Something the drop-in cannot do; the message names the alternative."""


@dataclass(frozen=True)
class _Spilled:
    """Placeholder for an array written to the spill folder; loaded memory-mapped."""

    path: str


def run(tuner: BaseTuner, workers: int, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
    """Run ``tuner``'s claim loop in ``workers`` child processes; raise the first child error."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - a dependency of joblib, hence of scikit-learn
        raise Unsupported("search(..., workers>1) needs cloudpickle (pip install cloudpickle); or use workers=1") from None
    folder = os.path.join(tuner._project_abs, "spill", uuid.uuid4().hex[:12])
    os.makedirs(folder)
    try:
        counter = itertools.count()
        body = {"tuner": tuner, "args": _spill(fit_args, folder, counter), "kwargs": _spill(fit_kwargs, folder, counter)}
        try:
            blob = cloudpickle.dumps(body)
        except Exception as exc:
            raise Unsupported(
                f"search(..., workers={workers}) must pickle the tuner, its hypermodel and the non-array search() "
                f"arguments (callbacks included), and that failed: {error_line(exc)}; make them picklable or use "
                "workers=1") from None
        payload = os.path.join(folder, "payload.pkl")
        with open(payload, "wb") as f:
            pickle.dump({"sys_path": list(sys.path), "cwd": os.getcwd()}, f)
            f.write(blob)
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
               "OMP_NUM_THREADS": threads}
        code = "from tuner_service.keras_tuner._processes import child_main; raise SystemExit(child_main())"
        procs = [subprocess.Popen([sys.executable, "-c", code, payload, str(i), str(workers)], env=env)
                 for i in range(workers)]
        _wait(procs)
        for i, p in enumerate(procs):
            path = os.path.join(folder, f"error_{i}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    raise cloudpickle.load(f)
            if p.returncode not in (0, None):
                raise RuntimeError(f"search worker {i} exited with code {p.returncode}; see its output above")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of a ``search(..., workers=N)`` child process."""
    import cloudpickle

    payload, index, workers = (argv or sys.argv[1:])[:3]
    folder = os.path.dirname(payload)
    try:
        with open(payload, "rb") as f:
            header = pickle.load(f)
            sys.path[:0] = [p for p in header["sys_path"] if p not in sys.path]
            os.chdir(header["cwd"])
            body = cloudpickle.loads(f.read())
        tuner: BaseTuner = body["tuner"]
        tuner._worker_index += int(index)
        args, kwargs = _unspill(body["args"]), _unspill(body["kwargs"])
        interrupted: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            # Only the first signal interrupts: a second one (Ctrl-C reaches the whole process
            # group, and the parent forwards it too) must not break the trial's hand-back.
            if not interrupted:
                interrupted.append(signum)
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        tuner._get_study()
        _barrier(folder, int(index), int(workers))
        tuner._work(args, kwargs)
        return 0
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        traceback.print_exc()
        with open(os.path.join(folder, f"error_{index}.pkl"), "wb") as f:
            try:
                f.write(cloudpickle.dumps(exc))
            except Exception:
                f.write(cloudpickle.dumps(RuntimeError(f"search worker {index}: {error_line(exc)}")))
        return 1


def check_inputs(obj: Any) -> None:
    """Raise :class:`Unsupported` for inputs that cannot be sent to other processes."""
    _spill(obj, "", itertools.count(), dry_run=True)


def _unsupported_input(obj: Any) -> str | None:
    if inspect.isgenerator(obj) or (hasattr(obj, "__next__") and hasattr(obj, "__iter__")):
        return "a generator/iterator"
    kind = type(obj).__module__ + "." + type(obj).__name__
    if "tensorflow" in kind and "dataset" in kind.lower():
        return "a tf.data.Dataset"
    if isinstance(obj, keras.utils.PyDataset):
        return "a keras.utils.PyDataset"
    return None


def _spill(obj: Any, folder: str, counter: Iterator[int], seen: dict[int, _Spilled] | None = None, *,
           dry_run: bool = False) -> Any:
    """``obj`` with every numpy array (and eager tensor) saved to ``folder`` and replaced by a
    ``_Spilled`` reference; tuples, lists and dicts are walked, and an array passed twice
    (``x`` also in ``validation_data``) is written once."""
    seen = {} if seen is None else seen
    why = _unsupported_input(obj)
    if why is not None:
        raise Unsupported(f"search(..., workers>1) cannot send {why} to worker processes; pass numpy arrays, or use "
                          "workers=1 (which runs in this process and accepts anything model.fit accepts)")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_spill(v, folder, counter, seen, dry_run=dry_run) for v in obj)
    if isinstance(obj, list):
        return [_spill(v, folder, counter, seen, dry_run=dry_run) for v in obj]
    if isinstance(obj, dict):
        return {k: _spill(v, folder, counter, seen, dry_run=dry_run) for k, v in obj.items()}
    if dry_run:
        return obj
    if not isinstance(obj, np.ndarray) and type(obj).__name__ == "EagerTensor":
        obj = obj.numpy()
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        if id(obj) not in seen:
            path = os.path.join(folder, f"array_{next(counter)}.npy")
            np.save(path, obj, allow_pickle=False)
            seen[id(obj)] = _Spilled(path)
        return seen[id(obj)]
    return obj


def _unspill(obj: Any) -> Any:
    if isinstance(obj, _Spilled):
        return np.load(obj.path, mmap_mode="r")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_unspill(v) for v in obj)
    if isinstance(obj, list):
        return [_unspill(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _unspill(v) for k, v in obj.items()}
    return obj


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the children; on Ctrl-C, make sure each got SIGINT (it hands its trial back)."""
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise


def _barrier(folder: str, index: int, workers: int) -> None:
    """Start claiming together, so the first child up does not take every trial while the
    others are still importing TensorFlow."""
    open(os.path.join(folder, f"ready_{index}"), "w").close()
    deadline = time.monotonic() + _BARRIER_SECONDS
    while time.monotonic() < deadline:
        if sum(os.path.exists(os.path.join(folder, f"ready_{i}")) for i in range(workers)) >= workers:
            return
        if any(name.startswith("error_") for name in os.listdir(folder)):
            return  # a child failed to start: the others go on; the parent reports the error
        time.sleep(0.1)
