"""The dashboard: served by the real CLI, browsed in a real (headless) Chromium.

The studies are built with Optuna directly (tests/dashboard_support.py) in the shape the service
writes, so no Keras runs here; the notes and learning-curve images are the real ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import ENV
from dashboard_support import BEST_NUMBER, CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, POINTS, make_study

from tuner_service import notes
from tuner_service.dashboard import is_loopback, make_app, open_artifact_store, serve, url_for
from tuner_service.errors import BadInput

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
#: The first page load parses a 4 MB bundle; generous, as CI machines are slow.
UI_TIMEOUT_MS = 30_000


@dataclass
class Demo:
    url: str
    artifacts: Path
    study: optuna.Study
    other: optuna.Study


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Two studies in a SQLite file, with the notes and curves the worker would add.

    Built once per module: every test here only reads it.
    """
    tmp_path = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = make_study(storage, "digits-demo")
    other = make_study(storage, "digits-wide", POINTS[:2])
    artifacts = tmp_path / "artifacts"
    store = open_artifact_store(artifacts)
    for s in (study, other):
        notes.write_study_note(s)
        for t in s.get_trials(deepcopy=False):
            notes.write_trial_note(s, t._trial_id)
            assert notes.upload_trial_curves(s, t._trial_id, t.user_attrs["history"], store,
                                             best_epoch=t.user_attrs["best_epoch"])
    return Demo(url, artifacts, study, other)


def launch_cli(*args: str, cwd: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start `tuner-service dashboard ... --port 0`; returns the process, its base URL and the lines
    printed up to the URL. Port 0 lets the OS pick a free port, so parallel runs never collide."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner_service", "dashboard", *args, "--port", "0"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "PYTHONFAULTHANDLER": "1"},
        # As in a terminal: a test run started in the background (`make test &`) inherits an
        # ignored SIGINT, which Python keeps, and Ctrl-C would then do nothing.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:  # the server prints its URL once it listens
        lines.append(line)
        if line.startswith("dashboard:"):
            url = line.split()[1]
            return proc, url.removesuffix("/dashboard"), lines
    proc.wait(timeout=10)
    raise AssertionError(f"dashboard exited with {proc.returncode} before listening: {proc.stderr.read()}")  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[int, str]:
    """Ctrl-C, as a user stops it (or SIGTERM, as docker does); returns exit code and stderr."""
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        # Still running: SIGABRT makes faulthandler (PYTHONFAULTHANDLER, set by launch_cli)
        # print every thread's stack, so the failure says where it hung.
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture
def served(demo: Demo, tmp_path: Path) -> Iterator[str]:
    proc, base, lines = launch_cli("--storage", demo.url, "--artifacts", str(demo.artifacts), cwd=tmp_path)
    try:
        # Loopback by default, so no warning about the missing authentication.
        assert base.startswith("http://127.0.0.1:") and "warning" not in "".join(lines), lines
        yield base
    finally:
        code, err = stop(proc)
        assert code == 0 and "Traceback" not in err, err


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(180)
def test_dashboard_in_chromium_shows_studies_trials_notes_and_curves(demo: Demo, served: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    sid = demo.study._study_id
    best = next(t for t in demo.study.get_trials() if t.number == BEST_NUMBER)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            js_errors: list[str] = []
            page.on("pageerror", lambda exc: js_errors.append(str(exc)))

            # Home: every study in the storage is listed, linking to its page.
            page.goto(f"{served}/dashboard")
            for s in (demo.study, demo.other):
                expect(page.locator(f'a[href="/dashboard/studies/{s._study_id}"]')).to_contain_text(s.study_name)

            # Study page: its name and the best trial, as the dashboard computes it from storage.
            page.goto(f"{served}/dashboard/studies/{sid}")
            expect(page.get_by_text(f"digits-demo (id={sid})")).to_be_visible()
            expect(page.get_by_text(f"Best Trial (number={BEST_NUMBER})")).to_be_visible()

            # Trial list: the trial count, and the best trial's parameter values.
            page.goto(f"{served}/dashboard/studies/{sid}/trials?numbers={BEST_NUMBER}")
            expect(page.get_by_text(f"{len(POINTS)} Trials", exact=True)).to_be_visible()
            expect(page.get_by_text(f"Trial {BEST_NUMBER} (trial_id={best._trial_id})")).to_be_visible()
            for name, value in best.params.items():
                expect(page.get_by_text(f"{name} {value}", exact=True)).to_be_visible()
            # Our trial note: the Keras facts.
            expect(page.get_by_text("Model summary", exact=True)).to_be_visible()
            expect(page.get_by_role("cell", name=str(best.user_attrs["param_count"]), exact=True)).to_be_visible()
            # Our learning-curve SVG, served from the artifact store and decoded by the browser.
            image = page.locator(f'img[alt="learning-curves-trial-{BEST_NUMBER}.svg"]')
            image.scroll_into_view_if_needed()
            expect(image).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            shot = tmp_path / "trial.png"
            page.screenshot(path=str(shot))

            # Study note: the best configuration and the data split.
            page.goto(f"{served}/dashboard/studies/{sid}/note")
            expect(page.get_by_text("Best configuration so far")).to_be_visible()
            expect(page.get_by_role("cell", name="1077", exact=True)).to_be_visible()
            page.screenshot(path=str(tmp_path / "note.png"))
            assert not js_errors, js_errors
        finally:
            browser.close()
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    if os.environ.get("TUNER_SERVICE_KEEP_SCREENSHOTS"):  # to look at them: set it to a directory
        keep = Path(os.environ["TUNER_SERVICE_KEEP_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            (keep / png.name).write_bytes(png.read_bytes())


# ---------------------------------------------------------------------------- no browser needed


def test_missing_database_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope.db'}"
    for call in (lambda: make_app(url), lambda: serve(url, port=0)):
        with pytest.raises(BadInput) as info:
            call()
        assert "no database at" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("storage, expected", [
    ("sqlite:///nope.db", "no database at 'nope.db'"),
    ("postgresql+psycopg://bob:s3cr3t@127.0.0.1:9/db", "cannot open storage"),
])
def test_cli_bad_storage_exits_2_with_one_line(tmp_path: Path, storage: str, expected: str) -> None:
    out = subprocess.run([sys.executable, "-m", "tuner_service", "dashboard", "--storage", storage],
                         cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert "s3cr3t" not in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(90)
def test_cli_warns_when_not_bound_to_loopback(demo: Demo, tmp_path: Path) -> None:
    proc, base, lines = launch_cli("--storage", demo.url, "--host", "0.0.0.0", cwd=tmp_path)
    code, err = stop(proc)
    text = "".join(lines)
    assert "warning" in text and "no authentication" in text, text
    assert base.startswith("http://") and code == 0, err


def test_loopback_and_url() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.1.2.3"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.org"]))
    assert url_for("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard"
    assert url_for("::1", 80) == "http://[::1]:80/dashboard"


def test_artifacts_dir_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner_service.dashboard import artifacts_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_SERVICE_ARTIFACTS", raising=False)
    assert artifacts_dir() is None  # no ./artifacts: none, and none created
    assert not (tmp_path / "artifacts").exists()
    (tmp_path / "artifacts").mkdir()
    assert artifacts_dir() == Path("artifacts")
    monkeypatch.setenv("TUNER_SERVICE_ARTIFACTS", str(tmp_path / "shared" / "art"))
    assert artifacts_dir() == tmp_path / "shared" / "art" and (tmp_path / "shared" / "art").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInput, match="is a file"):
        artifacts_dir(tmp_path / "file")


# ---------------------------------------------------------------------------- production entry

REPO = Path(__file__).resolve().parents[1]


def gunicorn(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "dashboards/gunicorn.conf.py", "--workers", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**ENV, "TUNER_SERVICE_DASHBOARD_BIND": "127.0.0.1:0", **env},
    )


@pytest.mark.timeout(60)
def test_gunicorn_entry_serves_the_storage(demo: Demo) -> None:
    import json
    import re
    import urllib.request

    proc = gunicorn({"TUNER_SERVICE_STORAGE": demo.url, "TUNER_SERVICE_ARTIFACTS": str(demo.artifacts)})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := re.search(r"Listening at: (http://\S+)", line):
                base = m[1]
                break
        else:
            raise AssertionError("gunicorn exited before listening")
        for line in proc.stdout:  # the worker has booted once the master says so; then ask it
            if "Booting worker" in line:
                break
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as resp:
            names = {s["study_name"] for s in json.load(resp)["study_summaries"]}
        assert names == {"digits-demo", "digits-wide"}
        with urllib.request.urlopen(f"{base}/api/meta", timeout=30) as resp:
            assert json.load(resp)["artifact_is_available"] is True
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_gunicorn_entry_refuses_a_bad_storage_in_one_line(tmp_path: Path) -> None:
    proc = gunicorn({"TUNER_SERVICE_STORAGE": f"sqlite:///{tmp_path / 'nope.db'}"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "no database at" in errors[0] and "Traceback" not in out, out
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.timeout(90)
def test_sigterm_closes_the_dashboard_cleanly(demo: Demo, tmp_path: Path) -> None:
    """`docker compose stop` and systemd send SIGTERM: exit 0, not killed mid-request."""
    proc, base, _ = launch_cli("--storage", demo.url, cwd=tmp_path)
    code, err = stop(proc, signal.SIGTERM)
    assert code == 0 and "Traceback" not in err, err
