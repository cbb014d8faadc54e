"""`make test` says loudly which test groups were skipped and how to enable them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ENV

TESTS = Path(__file__).resolve().parent


def test_skipped_groups_are_listed_with_how_to_enable_them(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["skip_summary"]\n')
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "needs_browser = pytest.mark.skipif(True, reason='needs chromium: apt-get install chromium')\n"
        "@needs_browser\ndef test_a(): pass\n"
        "@needs_browser\ndef test_b(): pass\n"
        "def test_c(): pytest.skip('needs docker: install the compose plugin')\n"
        "def test_d(): pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(TESTS)}, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.split("3 TESTS SKIPPED: these groups did not run", 1)[1]
    assert "   2 skipped: needs chromium: apt-get install chromium" in summary
    assert "e.g. test_x.py::test_a and 1 more" in summary
    assert "   1 skipped: needs docker: install the compose plugin" in summary


def test_no_summary_when_nothing_was_skipped(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["skip_summary"]\n')
    (tmp_path / "test_y.py").write_text("def test_ok(): pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(TESTS)}, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0 and "SKIPPED" not in out.stdout, out.stdout
