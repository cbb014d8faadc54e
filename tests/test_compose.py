"""docker-compose.yml: the deployment's promises, checked without Docker.

The compose file is what people run on a GPU box, and its mistakes are quiet: a literal
password ends up in git, a port published on 0.0.0.0 exposes the database and dashboard to
the network, a missing GPU reservation leaves the agent on the CPU. So the file is parsed
and checked here; ``docker compose config`` (which needs no daemon) validates it too where
the CLI is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
STORAGE_URL = "postgresql+psycopg://tuner:${POSTGRES_PASSWORD}@postgres:5432/tuner"

_SECRET_KEY = re.compile(r"pass(word)?|pwd|secret|token", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<pw>[^@\s]+)@")
_REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (dotted key path, string value) in the parsed file, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", str(key)
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "dashboard", "agent"} <= set(services)
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert any(str(v).startswith("pgdata:") for v in pg["volumes"]), "the database needs a named volume"
    assert "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(map(str, pg["healthcheck"]["test"]))
    for name in ("dashboard", "agent"):
        svc = services[name]
        assert svc["build"] in (".", {"context": "."}), f"{name} runs the project image"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert _env(svc)["TUNER_SERVICE_STORAGE"] == STORAGE_URL


def test_dashboard(compose: dict[str, Any]) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["command"] == "gunicorn -c dashboards/gunicorn.conf.py dashboards.wsgi:application"
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    # gunicorn listens on 0.0.0.0 inside the container: the login is required, from .env.
    assert _env(dashboard)["TUNER_SERVICE_DASHBOARD_PASSWORD"] == "${DASHBOARD_PASSWORD:?set it in .env}"


def test_agent_reserves_all_nvidia_gpus(compose: dict[str, Any]) -> None:
    agent = compose["services"]["agent"]
    command = agent["command"] if isinstance(agent["command"], list) else agent["command"].split()
    assert command[:4] == ["tuner-service", "agent", "--gpus", "all"]
    devices = agent["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    assert any(str(v).split(":")[1] == "/work/studies" for v in agent["volumes"]), "study code at /work/studies"


def test_no_literal_password(compose: dict[str, Any]) -> None:
    """Every password-ish value, and every password inside a URL, is a ``${...}`` reference."""
    assert "${POSTGRES_PASSWORD:?" in compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    checked = 0
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if _SECRET_KEY.search(key):
                assert _REFERENCE.match(value), f"{name}: {key} must be a ${{...}} reference, not a literal"
                checked += 1
    for where, text in _strings(compose):
        for m in _URL_PASSWORD.finditer(text):
            assert _REFERENCE.match(m["pw"]), f"{where}: the URL's password must be a ${{...}} reference"
            checked += 1
    assert checked >= 4  # POSTGRES_PASSWORD, the dashboard's login, the dashboard's and agent's storage URLs
    assert "change-me" not in COMPOSE.read_text()


def test_ports_bound_to_localhost(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
            published += 1
    assert published >= 1


def test_env_example_and_dockerignore() -> None:
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=change-me$", example, re.MULTILINE)
    assert re.search(r"^DASHBOARD_PASSWORD=change-me$", example, re.MULTILINE)
    assert re.search(r"^#", example, re.MULTILINE), "explain what to do with it"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "*.db", ".env"):
        assert entry in ignored


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^ARG EXTRAS=gpu,postgres$", text, re.MULTILINE)
    assert 'pip install ".[${EXTRAS}]"' in text
    assert re.search(r"^WORKDIR /work$", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"


def _compose_cli() -> list[str] | None:
    """``docker compose`` (plugin) or ``docker-compose`` (standalone), whichever works."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            if subprocess.run([*cmd, "version"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def test_docker_compose_config(tmp_path: Path) -> None:
    """``docker compose config`` validates the file against Compose's schema; no daemon needed."""
    cmd = _compose_cli()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (the YAML checks above still ran); "
                    "install Docker's compose plugin to validate the file against Compose's schema")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=x\nDASHBOARD_PASSWORD=y\n")
    (tmp_path / "studies").mkdir()
    proc = subprocess.run([*cmd, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # Without the password the file refuses to load instead of starting with an empty one.
    (tmp_path / ".env").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    proc = subprocess.run([*cmd, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    assert "set it in .env" in proc.stderr
