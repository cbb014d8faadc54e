"""The Ray executor (`tuner-service agent --ray`, `submit --ray`) on a real local Ray cluster.

The cluster is Ray's own ``ray.cluster_utils.Cluster``: a head node and worker nodes as real
raylet processes on this machine, the worker nodes declaring fake GPUs (Ray places actors on
them and sets ``CUDA_VISIBLE_DEVICES``; nothing needs the hardware). Storage is the throwaway
PostgreSQL server; the driver is the real CLI in a subprocess; trials are tiny Keras models.
Each node gets a small object store (80 MB) and no dashboard: 8 actors importing TensorFlow
are heavy on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ENV, MODELS, cli, write_study
from optuna.trial import TrialState

SLOW = f"{MODELS / 'tiny.py'}:Slow"
OBJECT_STORE = 80 * 2**20


# ---------------------------------------------------------------------------- fixtures and helpers


class LocalCluster:
    """A head node without resources (no actor lands there) and worker nodes with fake GPUs."""

    def __init__(self, temp_dir: str) -> None:
        from ray._common.utils import get_default_ray_temp_dir
        from ray.cluster_utils import Cluster

        self.temp_dir = temp_dir
        # Cluster() records its address in the default temp dir whatever temp_dir says.
        os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0, "object_store_memory": OBJECT_STORE, "include_dashboard": False,
            "temp_dir": temp_dir})
        self.address = self.cluster.address

    def add_node(self, *, gpus: int, cpus: int) -> Any:
        return self.cluster.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=OBJECT_STORE)

    def remove_node(self, node: Any) -> None:
        self.cluster.remove_node(node)

    def shutdown(self) -> None:
        from ray._common.utils import get_ray_address_file

        self.cluster.shutdown()
        # Cluster() records its address for `ray.init("auto")`; leave no stale one behind.
        address_file = Path(get_ray_address_file(None))
        if address_file.exists() and address_file.read_text().strip() == self.address:
            address_file.unlink()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Makes a local cluster; the test environment at that moment is every node's (and so
    every actor's) environment, e.g. TUNER_TEST_SLEEP."""
    made: list[LocalCluster] = []

    def make(env: dict[str, str]) -> LocalCluster:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # A short path: Ray's Unix sockets live under it (107-byte limit).
        made.append(LocalCluster(tempfile.mkdtemp(prefix="r15-", dir="/tmp")))
        return made[-1]

    yield make
    for c in made:
        c.shutdown()


def _fake_nvidia_smi(directory: Path) -> Path:
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text('#!/bin/sh\ncase "$*" in *memory.total*) echo 16000;; *) printf "0\\n1\\n";; esac\n')
    script.chmod(0o755)
    return bin_dir


def _submit(workdir: Path, pg_url: str, name: str, trials: int) -> optuna.Study:
    study_file = write_study(workdir, name, model=SLOW, budget={"max_trials": trials, "max_epochs": 1})
    out = cli("submit", study_file, "--no-wait", cwd=workdir, env={"TUNER_SERVICE_STORAGE": pg_url})
    assert out.returncode == 0, out.stderr
    return optuna.load_study(study_name=name, storage=pg_url)


def _driver(workdir: Path, pg_url: str, *args: str) -> subprocess.Popen[str]:
    """`tuner-service agent --ray ...` with the storage URL in the environment, not argv."""
    return subprocess.Popen([sys.executable, "-m", "tuner_service", "agent", *args], cwd=workdir,
                            env={**ENV, "TUNER_SERVICE_STORAGE": pg_url}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(predicate: Any, what: str, driver: subprocess.Popen[str], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited while waiting for {what}:\n{driver.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.5)
    driver.kill()
    raise AssertionError(f"timed out waiting for {what}:\n{driver.communicate()[0]}")


def _running_on(study: optuna.Study, node_id: str) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials on that Ray node whose model is built (every parameter drawn)."""
    return [t for t in study.get_trials(states=(TrialState.RUNNING,))
            if t.user_attrs.get("ray_node") == node_id and "learning_rate" in t.params]


def _study_if_registered(url: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None


def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    assert password, "the test PostgreSQL URL carries a password"
    return password


def _files_mentioning(root: str, secret: str) -> list[str]:
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


# ---------------------------------------------------------------------------- the cluster tests


@pytest.mark.slow
@pytest.mark.postgres
def test_two_trials_per_fake_gpu_on_two_nodes_run_eight_at_once(workdir: Path, pg_url: str, ray_cluster: Any) -> None:
    """--trials-per-gpu 2 over 2 nodes x 2 fake GPUs: 8 actors, 8 trials at once, each recorded
    with its node and CUDA_VISIBLE_DEVICES; then `agent --drain`: the 8 finish, none starts, and
    the budget is exact across both nodes (8 run, 2 left of 10)."""
    # A fake nvidia-smi on every node (16,000 MB per GPU): each of the 2 actors per GPU gets the
    # agent's cap, 90% / 2 of its GPU.
    smi = _fake_nvidia_smi(workdir)
    cluster = ray_cluster({"TUNER_TEST_SLEEP": "20", "PATH": f"{smi}:{os.environ['PATH']}"})
    nodes = [cluster.add_node(gpus=2, cpus=4) for _ in range(2)]
    study = _submit(workdir, pg_url, "eight", 10)
    driver = _driver(workdir, pg_url, "--ray", cluster.address, "--trials-per-gpu", "2")
    _wait(lambda: len([t for t in study.get_trials(states=(TrialState.RUNNING,)) if "learning_rate" in t.params]) == 8,
          "8 trials running", driver)
    drain = cli("agent", "--drain", cwd=workdir, env={"TUNER_SERVICE_STORAGE": pg_url})
    assert drain.returncode == 0 and "draining agent pid" in drain.stdout, drain.stdout + drain.stderr
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, out
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8, out
    status = json.loads(cli("status", "eight", "-f", "json", cwd=workdir, env={"TUNER_SERVICE_STORAGE": pg_url}).stdout)[0]
    assert status["waiting"] == 2, status  # the 2 budget slots nobody took
    assert "drained: every running trial finished, none handed back" in out, out
    # All eight ran at the same time: every start precedes every completion.
    assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials), out
    node_ids = {n.node_id for n in nodes}
    placements = Counter((t.user_attrs["ray_node"], t.user_attrs["cuda_visible_devices"]) for t in trials)
    # Two trials on each fake GPU of each node: Ray's placement of num_gpus=0.5 actors.
    assert sorted(placements.values()) == [2, 2, 2, 2], placements
    assert {node for node, _ in placements} == node_ids
    assert {gpu for _, gpu in placements} == {"0", "1"}
    assert len({t.user_attrs["ray_actor"] for t in trials}) == 8
    assert all(t.user_attrs["slot"] == f"ray/gpu{t.user_attrs['cuda_visible_devices']}" for t in trials)
    assert re.search(r"actor\(s\) started, 0 lost, 8 trial\(s\) run", out), out
    assert out.count("GPU memory cap 7200 MB") == 8, out
    spread = (max(t.datetime_start for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    print(f"8 trials started within {spread:.1f} s")

    # `submit --ray` on the same cluster, and an actor process killed mid-trial on a live node:
    # Ray restarts it, the driver re-queues its trial as soon as it answers, the retry completes.
    study_file = write_study(workdir, "oneshot", model=SLOW, budget={"max_trials": 2, "max_epochs": 1})
    submit = subprocess.Popen([sys.executable, "-m", "tuner_service", "submit", str(study_file), "--ray",
                               cluster.address], cwd=workdir, env={**ENV, "TUNER_SERVICE_STORAGE": pg_url},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    oneshot = _wait(lambda: _study_if_registered(pg_url, "oneshot"), "the study registered", submit)
    victim = _wait(lambda: [t for t in oneshot.get_trials(states=(TrialState.RUNNING,)) if "learning_rate" in t.params],
                   "a running trial", submit)[0]
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out2, _ = submit.communicate(timeout=300)
    assert submit.returncode == 0, out2
    trials = oneshot.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 2, TrialState.FAIL: 1}, out2
    assert trials[victim.number].user_attrs["fail_reason"] == "Ray actor lost: its process died"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert "study oneshot: 2 complete" in out2 and "best trial #" in out2, out2

    # The storage URL reaches the actors without its password being written anywhere.
    password = _password(pg_url)
    assert password not in out and password not in out2
    assert list(Path(cluster.temp_dir).rglob("worker-*.out")), "the actors' logs are under the cluster's temp dir"
    assert _files_mentioning(cluster.temp_dir, password) == []


@pytest.mark.slow
@pytest.mark.postgres
def test_nodes_joining_and_leaving_mid_study(workdir: Path, pg_url: str, ray_cluster: Any) -> None:
    """One node, then a second joins (new actors on it), then it is removed while its trials
    run: the driver survives and reports it, the lost trials are retried (with the same
    parameters where they had drawn any), and the study ends with exactly max_trials COMPLETE trials, none RUNNING."""
    cluster = ray_cluster({"TUNER_TEST_SLEEP": "15"})
    first = cluster.add_node(gpus=1, cpus=2)
    study = _submit(workdir, pg_url, "elastic", 6)
    driver = _driver(workdir, pg_url, "--ray", cluster.address, "--trials-per-gpu", "2", "--once")
    _wait(lambda: len(_running_on(study, first.node_id)) == 2, "two trials on the first node", driver)
    second = cluster.add_node(gpus=1, cpus=2)
    lost = _wait(lambda: _running_on(study, second.node_id), "a trial on the node that joined", driver)
    cluster.remove_node(second)
    out, _ = driver.communicate(timeout=400)
    print(out)
    assert driver.returncode == 0, out
    trials = study.get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == 6, (out, [t.user_attrs.get("fail_reason") for t in trials])
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in lost} <= {t.number for t in failed}
    for t in failed:
        assert t.user_attrs["ray_node"] == second.node_id
        assert t.user_attrs["fail_reason"].startswith("Ray actor lost: its node"), t.user_attrs["fail_reason"]
        retry = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        # The second actor's trial may be lost before its model drew any parameter: nothing to
        # keep, so its retry draws afresh. One that had drawn them is retried with the same.
        assert retry[0].params == t.params or not t.params, (t.params, retry[0].params)
        assert retry[0].user_attrs["ray_node"] == first.node_id
    assert f"({second.node_id[:8]}) joined" in out and f"({second.node_id[:8]}) left" in out, out
    assert "left the cluster; Ray restarts it where resources allow" in out, out
    assert _password(pg_url) not in out


# ---------------------------------------------------------------------------- without a cluster


def test_importing_the_service_never_imports_ray(tmp_path: Path) -> None:
    """Ray is imported only by a driver given --ray: not by the package, the CLI, the agent,
    the executor's modules, nor by an agent run without --ray."""
    code = (
        "import sys\n"
        "import tuner_service, tuner_service.cli, tuner_service.agent, tuner_service.scheduling\n"
        "import tuner_service.ray_executor, tuner_service.ray_actor, tuner_service.worker, tuner_service.service\n"
        "from tuner_service.storage import open_storage\n"
        f"open_storage('sqlite:///{tmp_path}/t.db')\n"
        "from tuner_service.cli import app\n"
        f"app(['agent', '--gpus', 'none', '--once', '--storage', 'sqlite:///{tmp_path}/t.db'], standalone_mode=False)\n"
        "print('ray imported:', 'ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "agent stopped" in out.stdout
    assert out.stdout.strip().endswith("ray imported: False"), out.stdout


@pytest.mark.parametrize("command", [["agent", "--ray", "auto"], ["submit", "s.yaml", "--ray", "auto"]])
def test_ray_flag_without_ray_says_how_to_install_it(workdir: Path, command: list[str]) -> None:
    write_study(workdir, "s")
    code = ("import sys; sys.modules['ray'] = None  # `import ray` fails as if Ray were not installed\n"
            "from tuner_service.cli import main; main()\n")
    out = subprocess.run([sys.executable, "-c", code, *command, "--storage", f"sqlite:///{workdir}/t.db"],
                         capture_output=True, text=True, env=ENV, cwd=workdir, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: --ray needs Ray on this machine: pip install 'tuner-service[ray]'"
    assert not (workdir / "t.db").exists(), "nothing is registered before the check"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_ray_options_are_one_line_errors(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/t.db"
    from tuner_service.storage import open_storage

    open_storage(url)
    port = _free_port()  # nothing listens there: Ray itself would wait for minutes
    t0 = time.monotonic()
    out = cli("agent", "--ray", f"127.0.0.1:{port}", "--once", "--storage", url, cwd=workdir)
    assert out.returncode == 2 and time.monotonic() - t0 < 60
    assert out.stderr.count("\n") == 1 and f":{port}" in out.stderr and "cannot reach the Ray cluster" in out.stderr
    cases = {
        ("agent", "--ray", "auto", "--gpus", "0,1"): "Ray assigns the GPUs; use --gpus all",
        ("agent", "--ray", "auto", "--slots", "2"): "--slots is for this machine's agent",
        ("agent", "--cpus-per-trial", "2"): "--cpus-per-trial is for --ray",
        ("agent", "--ray", "auto", "--cpus-per-trial", "0", "--gpus", "none"): "--cpus-per-trial 0 must be positive",
        ("submit", "s.yaml", "--ray", "auto", "--workers", "2"): "drop --workers",
        ("submit", "s.yaml", "--ray", "auto", "--no-wait"): "drop --no-wait",
        ("submit", "s.yaml", "--trials-per-gpu", "2"): "are for --ray",
    }
    write_study(workdir, "s")
    for args, expected in cases.items():
        out = cli(*args, "--storage", url, cwd=workdir)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert expected in out.stderr and out.stderr.count("\n") == 1, (args, out.stderr)


def test_storage_url_travels_masked_and_secrets_stay_home() -> None:
    import pickle

    from tuner_service.ray_actor import StorageURL
    from tuner_service.ray_executor import forwarded_env

    url = StorageURL("postgresql+psycopg://tuner:s3cr3t@db/tuner")
    assert "s3cr3t" not in repr(url) and "s3cr3t" not in str(url) and "tuner:***@db" in repr(url)
    assert pickle.loads(pickle.dumps(url)).reveal() == "postgresql+psycopg://tuner:s3cr3t@db/tuner"
    env = forwarded_env({"TUNER_SERVICE_HEARTBEAT_GRACE": "30", "TUNER_SERVICE_STORAGE": "postgresql://u:p@h/d",
                         "TUNER_SERVICE_DASHBOARD_PASSWORD": "x", "TUNER_SERVICE_S3_SECRET_KEY": "y",
                         "KERAS_BACKEND": "jax", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "z"})
    assert env == {"TUNER_SERVICE_HEARTBEAT_GRACE": "30", "KERAS_BACKEND": "jax"}


def test_kuberay_manifest_has_what_kuberay_needs() -> None:
    """deploy/kuberay-raycluster.yaml parses and carries what KubeRay and the recipe need (no
    cluster here: the fields KubeRay reads, the project image, the storage URL from a Secret)."""
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).parents[1] / "deploy" / "kuberay-raycluster.yaml").read_text()))
    clusters = [d for d in docs if d and d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    rc = clusters[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]
    import ray

    assert spec["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2], "the image's Ray and the CR's agree"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no actor on the head: the driver runs there"
    head_containers = head["template"]["spec"]["containers"]
    images = {c["image"] for c in head_containers}
    storage = next(e for e in head_containers[0]["env"] if e["name"] == "TUNER_SERVICE_STORAGE")
    assert set(storage["valueFrom"]["secretKeyRef"]) == {"name", "key"}, "the URL comes from a Secret"
    assert "value" not in storage
    # The recipe in the header: the Secret it names, and the driver submitted as a Ray job.
    text = (Path(__file__).parents[1] / "deploy" / "kuberay-raycluster.yaml").read_text()
    assert f"kubectl create secret generic {storage['valueFrom']['secretKeyRef']['name']}" in text
    assert f"--from-literal={storage['valueFrom']['secretKeyRef']['key']}=" in text
    assert "tuner-service agent --ray auto" in text
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"]
                                           for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "a GPU worker group"
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert "rayStartParams" in g
        images |= {c["image"] for c in g["template"]["spec"]["containers"]}
        assert not any(e.get("name") == "TUNER_SERVICE_STORAGE" for c in g["template"]["spec"]["containers"]
                       for e in c.get("env", [])), "workers never see the URL: actors get it from the driver"
    assert len(images) == 1, f"one project image everywhere, not {images}"
    assert spec.get("enableInTreeAutoscaling") is True


def test_an_actor_sets_the_agents_pinning_and_memory_caps_before_keras(tmp_path: Path) -> None:
    """RunnerActor's constructor (outside Ray: it is a plain class) applies the driver's settings,
    then the agent's runner environment for its slot: K actors on the GPU Ray assigned share 90%
    of it (fake nvidia-smi: 80,000 MB), JAX included; a CPU actor sees no GPU."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$*" in *memory.total*) echo 80000;; *) echo 0;; esac\n')
    smi.chmod(0o755)
    code = (
        "import json, os, sys\n"
        "from tuner_service.ray_actor import ActorSettings, RunnerActor, StorageURL\n"
        "gpu = sys.argv[1] == 'gpu'\n"
        "RunnerActor(ActorSettings(url=StorageURL('sqlite:///x.db'), gpu=gpu, trials_per_gpu=4,\n"
        "            env={'TUNER_SERVICE_HEARTBEAT_GRACE': '7'}, workdir=sys.argv[2]))\n"
        "print(json.dumps({'cwd': os.getcwd(), 'keras': 'keras' in sys.modules, **{k: os.environ.get(k) for k in (\n"
        "    'CUDA_VISIBLE_DEVICES', 'TUNER_SERVICE_GPU_MEMORY_MB', 'XLA_PYTHON_CLIENT_MEM_FRACTION',\n"
        "    'XLA_PYTHON_CLIENT_PREALLOCATE', 'TF_FORCE_GPU_ALLOW_GROWTH', 'CUDA_DEVICE_ORDER',\n"
        "    'TUNER_SERVICE_HEARTBEAT_GRACE', 'TUNER_SERVICE_STORAGE')}}))\n"
    )
    env = {k: v for k, v in ENV.items() if not k.startswith(("XLA_", "TUNER_SERVICE_"))}
    env.update(PATH=f"{tmp_path}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="3")  # as Ray sets it
    import json

    def run(kind: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", code, kind, str(tmp_path)], capture_output=True, text=True,
                             env=env, cwd="/", timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    gpu = run("gpu")
    assert gpu["CUDA_VISIBLE_DEVICES"] == "3" and gpu["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert gpu["TUNER_SERVICE_GPU_MEMORY_MB"] == str(int(80000 * 0.9 / 4))
    assert float(gpu["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.9 / 4, abs=1e-4)
    assert gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and gpu["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert gpu["TUNER_SERVICE_HEARTBEAT_GRACE"] == "7" and gpu["TUNER_SERVICE_STORAGE"] is None
    assert gpu["cwd"] == str(tmp_path) and gpu["keras"] is False
    cpu = run("cpu")
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["TUNER_SERVICE_GPU_MEMORY_MB"] is None
    assert cpu["XLA_PYTHON_CLIENT_MEM_FRACTION"] is None
