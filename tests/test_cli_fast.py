"""The CLI answers fast and never imports TensorFlow (or Optuna) just to print help."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ENV

SUBCOMMANDS = ["submit", "worker", "ls", "status", "best", "trials", "retrain", "dashboard", "report", "agent"]


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, tuner_service.cli as c; "
        "heavy = [m for m in ('tensorflow', 'keras', 'optuna', 'sklearn', 'keras_tuner') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_is_fast(sub: str | None) -> None:
    args = [sys.executable, "-m", "tuner_service"] + ([sub] if sub else []) + ["--help"]
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    assert elapsed < 1.5, f"`{' '.join(args[2:])}` took {elapsed:.2f}s"


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch):
    import typer

    from tuner_service import cli as cli_mod

    def interrupted(**_kwargs):
        raise typer.Abort()

    monkeypatch.setattr(cli_mod, "app", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli_mod.main()
    assert exit_info.value.code == 130


def test_a_bug_prints_its_traceback_with_passwords_masked(monkeypatch, capsys):
    from tuner_service import cli as cli_mod

    def broken(**_kwargs):
        raise RuntimeError("lost postgresql+psycopg://bob:s3cr3t@db/tuner")

    monkeypatch.setattr(cli_mod, "app", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli_mod.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: lost postgresql+psycopg://bob:***@db" in err
    assert "s3cr3t" not in err
