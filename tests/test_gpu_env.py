"""The per-runner GPU environment the agent builds, and what ``configure_gpu`` does with it.

No GPU and no framework needed: ``nvidia-smi`` is a fake script, Keras and torch are fakes in
``sys.modules``. What these settings do on a real GPU (JAX's allocator refusing more than its
share, torch's fraction, a ``--gpus none`` runner seeing no GPU) is measured by
``benchmarks/gpu/`` (see its RESULTS.md).
"""

from __future__ import annotations

import os
import stat
import sys
import types

import pytest

from tuner_service.agent import Agent, make_slots


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text('#!/bin/sh\ncase "$*" in *memory.total*) echo 80000;; *) printf "0\\n";; esac\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for var in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "TUNER_SERVICE_GPU_MEMORY_MB"):
        monkeypatch.delenv(var, raising=False)
    return bin_dir


def _agent(slots):
    agent = Agent.__new__(Agent)  # building an environment needs no storage
    agent.url, agent.slots = "sqlite:///t.db", slots
    return agent


@pytest.mark.parametrize("k", [2, 4])
def test_shared_gpu_caps_every_backend(fake_smi, k):
    slots = make_slots(["0"], k, None)
    env = _agent(slots)._slot_env(slots[1])
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["TUNER_SERVICE_GPU_MEMORY_MB"] == str(int(80000 * 0.9 / k))  # TensorFlow, torch
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # JAX: grow, do not take 75% at start
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.9 / k, abs=1e-4)  # JAX's cap
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_one_runner_per_gpu_grows_without_a_cap(fake_smi):
    slots = make_slots(["0"], 1, None)
    env = _agent(slots)._slot_env(slots[0])
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and "TUNER_SERVICE_GPU_MEMORY_MB" not in env


def test_cpu_slot_hides_every_gpu(fake_smi):
    slots = make_slots([], 1, 2)
    env = _agent(slots)._slot_env(slots[0])
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and "TUNER_SERVICE_GPU_MEMORY_MB" not in env


def test_fraction_without_nvidia_smi_and_user_settings_win(fake_smi, monkeypatch):
    from tuner_service.agent import Slot

    slots = [Slot(label=f"gpu0/{i}", cuda_visible_devices="0", memory_mb=1000) for i in range(3)]
    monkeypatch.setattr("tuner_service.agent.gpu_memory_mb", lambda gpu: None)
    assert _agent(slots)._slot_env(slots[0])["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3000"  # 90% / 3
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.2")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    env = _agent(slots)._slot_env(slots[0])
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.2" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def _fake_frameworks(monkeypatch, backend, *, cuda=True):
    calls = []
    keras = types.ModuleType("keras")
    keras.backend = types.SimpleNamespace(backend=lambda: backend)
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: cuda,
        device_count=lambda: 1,
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=80000 * 2**20),
        set_per_process_memory_fraction=lambda fraction, device: calls.append((round(fraction, 4), device)),
    )
    monkeypatch.setitem(sys.modules, "keras", keras)
    monkeypatch.setitem(sys.modules, "torch", torch)
    return calls


def test_configure_gpu_caps_torch(monkeypatch):
    from tuner_service.runners._env import configure_gpu

    calls = _fake_frameworks(monkeypatch, "torch")
    monkeypatch.setenv("TUNER_SERVICE_GPU_MEMORY_MB", "36000")
    configure_gpu()
    assert calls == [(0.45, 0)]


@pytest.mark.parametrize("backend,cap,cuda", [("torch", None, True), ("torch", "36000", False), ("jax", "36000", True)])
def test_configure_gpu_leaves_alone(monkeypatch, backend, cap, cuda):
    from tuner_service.runners._env import configure_gpu

    calls = _fake_frameworks(monkeypatch, backend, cuda=cuda)
    if cap:
        monkeypatch.setenv("TUNER_SERVICE_GPU_MEMORY_MB", cap)
    else:
        monkeypatch.delenv("TUNER_SERVICE_GPU_MEMORY_MB", raising=False)
    configure_gpu()  # jax: the agent's environment does it; no cap or no GPU: nothing to do
    assert calls == []
