"""The dashboard: served by the real CLI (and gunicorn), browsed in a real (headless) Chromium,
asked over real HTTP.

The browser tests read a study made by a real ``tuner-service submit`` (tests/submitted.py):
the notes and curves on its pages are the ones the product wrote, never the fixture. The HTTP
tests (login, read-only, binding) use a study built with Optuna directly, which is enough to
check who may read and write what.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ENV
from dashboard_support import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, POINTS, make_study
from submitted import Submitted

from tuner_service import notes
from tuner_service.dashboard import (
    Access,
    artifacts_dir,
    default_artifact_store,
    is_loopback,
    make_app,
    serve,
    url_for,
)
from tuner_service.errors import BadInput

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
#: The first page load parses a 4 MB bundle; generous, as CI machines are slow.
UI_TIMEOUT_MS = 30_000
#: The window of the browser tests (a laptop's).
WINDOW = {"width": 1440, "height": 900}
PASSWORD = "correct horse battery staple"


@dataclass
class Demo:
    url: str
    artifacts: Path
    study: optuna.Study
    other: optuna.Study


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Two studies in a SQLite file, with study notes (read-only tests check they stay)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = make_study(storage, "digits-demo")
    other = make_study(storage, "digits-wide", POINTS[:2])
    for s in (study, other):
        notes.write_study_note(s)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    return Demo(url, artifacts, study, other)


def launch_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start `tuner-service dashboard ... --port 0`; returns the process, its base URL and the lines
    printed up to the URL. Port 0 lets the OS pick a free port, so parallel runs never collide."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner_service", "dashboard", *args, "--port", "0"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ENV, "PYTHONFAULTHANDLER": "1", **(env or {})},
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
            return proc, re.sub(r"^http://[^:/]+:", "http://127.0.0.1:", url.removesuffix("/dashboard")), lines
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
def served_submitted(submitted: Submitted, tmp_path: Path) -> Iterator[str]:
    """`tuner-service dashboard --storage URL`, nothing else: the artifact directory is found by itself."""
    proc, base, lines = launch_cli("--storage", submitted.url, cwd=tmp_path)
    try:
        # Loopback by default, so no warning about a missing login.
        assert base.startswith("http://127.0.0.1:") and "warning" not in "".join(lines), lines
        assert f"artifacts: {submitted.database}-artifacts" in "".join(lines), lines
        yield base
    finally:
        code, err = stop(proc)
        assert code == 0 and "Traceback" not in err, err


def browse(base: str, tmp_path: Path, visit: Any) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WINDOW)
            page.set_default_timeout(UI_TIMEOUT_MS)
            js_errors: list[str] = []
            page.on("pageerror", lambda exc: js_errors.append(str(exc)))
            visit(page)
            assert not js_errors, js_errors
        finally:
            browser.close()
    if os.environ.get("TUNER_SERVICE_KEEP_SCREENSHOTS"):  # to look at them: set it to a directory
        keep = Path(os.environ["TUNER_SERVICE_KEEP_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            (keep / png.name).write_bytes(png.read_bytes())


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(300)
def test_dashboard_shows_a_submitted_study_and_its_study_note(submitted: Submitted, served_submitted: str,
                                                             tmp_path: Path) -> None:
    from playwright.sync_api import expect

    study = optuna.load_study(study_name=submitted.name, storage=submitted.url)
    sid, best = study._study_id, study.best_trial
    data = study.user_attrs["data"]

    def visit(page: Any) -> None:
        # Home: the study is listed, linking to its page.
        page.goto(f"{served_submitted}/dashboard")
        expect(page.locator(f'a[href="/dashboard/studies/{sid}"]')).to_contain_text(submitted.name)
        # Study page: its name and the best trial, as the dashboard computes it from storage.
        page.goto(f"{served_submitted}/dashboard/studies/{sid}")
        expect(page.get_by_text(f"{submitted.name} (id={sid})")).to_be_visible()
        expect(page.get_by_text(f"Best Trial (number={best.number})")).to_be_visible()
        # Study note, written by submit and by the worker when it finished: best configuration, data split.
        page.goto(f"{served_submitted}/dashboard/studies/{sid}/note")
        expect(page.get_by_text("Best configuration so far")).to_be_visible()
        expect(page.get_by_role("cell", name=str(data["train"]), exact=True)).to_be_visible()
        page.screenshot(path=str(tmp_path / "study-note.png"))

    browse(served_submitted, tmp_path, visit)


@pytest.mark.browser
@needs_chromium
@pytest.mark.timeout(300)
def test_trial_page_of_a_submitted_study_shows_its_note_and_fits_the_window(
        submitted: Submitted, served_submitted: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    study = optuna.load_study(study_name=submitted.name, storage=submitted.url)
    sid, best = study._study_id, study.best_trial

    def visit(page: Any) -> None:
        page.goto(f"{served_submitted}/dashboard/studies/{sid}/trials?numbers={best.number}")
        expect(page.get_by_text(f"Trial {best.number} (trial_id={best._trial_id})")).to_be_visible()
        # The note the worker wrote: per-epoch table with the best epoch marked, model summary, facts.
        expect(page.get_by_role("heading", name="Per epoch")).to_be_visible()
        expect(page.get_by_role("cell", name=f"{best.user_attrs['best_epoch']} (best)")).to_be_visible()
        expect(page.get_by_role("heading", name="Model summary")).to_be_visible()
        expect(page.get_by_text('Model: "sequential"').first).to_be_visible()
        expect(page.get_by_role("cell", name=f"{best.user_attrs['param_count']:,}", exact=True)).to_be_visible()
        # The learning curves, from the artifact directory beside the database.
        image = page.locator(f'img[alt="learning-curves-trial-{best.number}.svg"]')
        image.scroll_into_view_if_needed()
        expect(image).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        page.screenshot(path=str(tmp_path / "trial.png"), full_page=True)
        # The page fits the window: no attribute or note makes it scroll sideways.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= WINDOW["width"], f"the trial page is {width} px wide in a {WINDOW['width']} px window"

    browse(served_submitted, tmp_path, visit)


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


def test_cli_refuses_a_public_bind_without_a_login(demo: Demo, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tuner_service", "dashboard", "--storage", demo.url, "--host", "0.0.0.0",
                          "--port", "0"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert "refusing to serve the dashboard on 0.0.0.0 without a login" in line
    assert "TUNER_SERVICE_DASHBOARD_PASSWORD" in line and "--allow-unauthenticated" in line


@pytest.mark.timeout(90)
def test_cli_public_bind_with_allow_unauthenticated_warns(demo: Demo, tmp_path: Path) -> None:
    proc, base, lines = launch_cli("--storage", demo.url, "--host", "0.0.0.0", "--allow-unauthenticated", cwd=tmp_path)
    try:
        assert get(f"{base}/api/studies")[0] == 200
    finally:
        code, err = stop(proc)
    text = "".join(lines)
    assert "warning" in text and "no login" in text, text
    assert code == 0, err


def test_loopback_and_url() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.1.2.3", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.org"]))
    assert url_for("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard"
    assert url_for("::1", 80) == "http://[::1]:80/dashboard"


def test_artifacts_dir_default_beside_sqlite_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_SERVICE_ARTIFACTS", raising=False)
    monkeypatch.delenv("TUNER_SERVICE_STORAGE", raising=False)
    assert artifacts_dir() is None  # no ./artifacts: none, and none created
    assert default_artifact_store(None) is None  # ./tuner.db does not exist (yet): nothing created
    assert list(tmp_path.iterdir()) == []
    # Beside a SQLite database: <file>-artifacts, created, for workers and the dashboard alike.
    make_study(optuna.storages.RDBStorage("sqlite:///tuner.db"), "s")
    store = default_artifact_store(None)
    assert store is not None and (tmp_path / "tuner.db-artifacts").is_dir()
    assert artifacts_dir(None, f"sqlite:///{tmp_path / 'tuner.db'}") == tmp_path / "tuner.db-artifacts"
    monkeypatch.setenv("TUNER_SERVICE_STORAGE", f"sqlite:///{tmp_path / 'tuner.db'}")
    assert artifacts_dir(None, "sqlite:///tuner.db") == Path("tuner.db-artifacts")
    # Not SQLite: ./artifacts when it exists, as before.
    assert artifacts_dir(None, "postgresql+psycopg://u:p@db/x") is None
    (tmp_path / "artifacts").mkdir()
    assert artifacts_dir() == Path("artifacts") == artifacts_dir(None, "postgresql+psycopg://u:p@db/x")
    # $TUNER_SERVICE_ARTIFACTS wins over both; an explicit directory over everything.
    monkeypatch.setenv("TUNER_SERVICE_ARTIFACTS", str(tmp_path / "shared" / "art"))
    assert artifacts_dir(None, "sqlite:///tuner.db") == tmp_path / "shared" / "art" and (tmp_path / "shared" / "art").is_dir()
    assert artifacts_dir(tmp_path / "mine", "sqlite:///tuner.db") == tmp_path / "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInput, match="is a file"):
        artifacts_dir(tmp_path / "file")


# ---------------------------------------------------------------------------- login and read-only over HTTP


def get(url: str, *, method: str = "GET", auth: str | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=body,
                                     headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def login_served(demo: Demo, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """The CLI with a login from a password file, bound to all interfaces (allowed: it has a login)."""
    secret = tmp_path / "dashboard-password"
    secret.write_text(PASSWORD + "\n")
    proc, base, lines = launch_cli("--storage", demo.url, "--host", "0.0.0.0", "--password-file", str(secret),
                                   cwd=tmp_path)
    try:
        yield base, lines
    finally:
        code, err = stop(proc)
        assert code == 0 and "Traceback" not in err, err


@pytest.mark.timeout(120)
def test_login_required_and_nothing_leaks_without_it(demo: Demo, login_served: tuple[str, list[str]]) -> None:
    base, lines = login_served
    assert "warning" not in "".join(lines) and PASSWORD not in "".join(lines)
    assert "login:     user 'tuner'" in "".join(lines)
    sid = demo.study._study_id
    wrong = [None, basic("tuner", "wrong"), basic("someone", PASSWORD), basic("tuner", PASSWORD + "x"),
             "Bearer wrong", f"Bearer {PASSWORD[:-1]}", "Basic !!!not-base64", f"Digest {PASSWORD}",
             "Basic " + base64.b64encode(PASSWORD.encode()).decode()]  # no user:password separator
    paths = ["/api/studies", f"/api/studies/{sid}", "/dashboard", f"/dashboard/studies/{sid}", "/favicon.ico",
             f"/csv/{sid}", "/api/meta", "/nonexistent"]
    for auth in wrong:
        for path in paths:
            status, body = get(base + path, auth=auth)
            assert status == 401, (auth, path, status)
            assert body == b"login required\n"  # the same for every path: no study name, no hint
        status, body = get(f"{base}/api/studies/{sid}", method="DELETE", auth=auth)
        assert status == 401 and body == b"login required\n"
    for auth in (basic("tuner", PASSWORD), f"Bearer {PASSWORD}", f"bearer  {PASSWORD}"):
        status, body = get(f"{base}/api/studies", auth=auth)
        assert status == 200, (auth, status)
        assert {s["study_name"] for s in json.loads(body)["study_summaries"]} == {"digits-demo", "digits-wide"}
    assert optuna.study.get_all_study_names(demo.url) == ["digits-demo", "digits-wide"]


def write_routes(base: str) -> list[tuple[str, str]]:
    """Every route of optuna-dashboard that is not GET, with its placeholders filled."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(optuna.storages.InMemoryStorage())
    routes = []
    for route in app.routes:  # type: ignore[attr-defined]
        if route.method in ("GET", "HEAD"):
            continue
        path = re.sub(r"<study_id:int>", "1", route.rule)
        path = re.sub(r"<trial_id:int>", "1", path)
        path = re.sub(r"<artifact_id[^>]*>", "0123abcd-0000-0000-0000-000000000000", path)
        path = re.sub(r"<[^>]+>", "x", path)
        routes.append((route.method, base + path))
    return routes


def snapshot(url: str) -> Any:
    storage = optuna.storages.RDBStorage(url)
    studies = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id)
        studies.append((s.study_name, storage.get_study_system_attrs(s._study_id), s.user_attrs,
                        [(t.number, t.state, t.values, t.user_attrs, t.system_attrs) for t in trials]))
    storage.engine.dispose()
    return json.dumps(studies, default=str, sort_keys=True)


@pytest.mark.timeout(120)
def test_read_only_refuses_every_write_and_serves_every_read(demo: Demo, tmp_path: Path) -> None:
    before = snapshot(demo.url)
    proc, base, lines = launch_cli("--storage", demo.url, "--read-only", cwd=tmp_path,
                                   env={"TUNER_SERVICE_DASHBOARD_PASSWORD": PASSWORD})
    try:
        assert "read-only" in "".join(lines) and PASSWORD not in "".join(lines)
        auth = basic("tuner", PASSWORD)
        routes = write_routes(base)
        # The API's writes: notes, renaming and deleting studies, telling and skipping trials,
        # user attrs, preferences, artifact uploads and deletions, schema migration, LLM queries.
        assert {m for m, _ in routes} == {"POST", "PUT", "DELETE"} and len(routes) >= 15
        assert any(u.endswith("/note") for _, u in routes) and any(m == "DELETE" for m, _ in routes)
        bodies = {"/rename": b'{"study_name": "renamed"}', "/note": b'{"version": 1, "body": "defaced"}',
                  "/tell": b'{"state": "Fail"}', "/user-attrs": b'{"user_attrs": {"x": 1}}'}
        for method, url in routes:
            body = next((b for suffix, b in bodies.items() if url.endswith(suffix)), b"{}")
            status, text = get(url, method=method, auth=auth, body=body)
            assert status == 403 and text == b"this dashboard is read-only\n", (method, url, status)
        sid = demo.study._study_id
        for path in ("/api/studies", f"/api/studies/{sid}", f"/api/studies/{sid}/param_importances", "/dashboard",
                     f"/csv/{sid}", "/api/meta"):
            assert get(base + path, auth=auth)[0] == 200, path
        assert get(f"{base}/api/studies/{sid}", method="HEAD", auth=auth)[0] == 200
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert snapshot(demo.url) == before


def test_read_write_dashboard_does_write(demo: Demo, tmp_path: Path) -> None:
    """The control: the same request through the unguarded app changes the storage, so the 403s
    above are the guard's doing, not a malformed request."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    url = f"sqlite:///{tmp_path / 'rw.db'}"
    study = make_study(optuna.storages.RDBStorage(url), "rw")

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    app = make_app(url, access=Access(password=PASSWORD))
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        status, _ = get(f"{base}/api/studies/{study._study_id}/note", method="PUT", auth=f"Bearer {PASSWORD}",
                        body=b'{"version": 1, "body": "hello"}')
        assert status == 204
    finally:
        server.shutdown()
        server.server_close()
    from optuna_dashboard import get_note

    assert get_note(optuna.load_study(study_name="rw", storage=url)) == "hello"


def test_access_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="password file '.*nope' not found"):
        Access.from_env(password_file=tmp_path / "nope", environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadInput, match="is empty"):
        Access.from_env(password_file=tmp_path / "empty", environ={})
    with pytest.raises(BadInput, match="both"):
        Access.from_env(environ={"TUNER_SERVICE_DASHBOARD_PASSWORD": "a", "TUNER_SERVICE_DASHBOARD_PASSWORD_FILE": "f"})
    with pytest.raises(BadInput, match="user name 'a:b' is not valid"):
        Access.from_env(user="a:b", environ={})
    with pytest.raises(BadInput, match="TUNER_SERVICE_DASHBOARD_READ_ONLY='maybe' is not a yes/no value"):
        Access.from_env(environ={"TUNER_SERVICE_DASHBOARD_READ_ONLY": "maybe"})
    (tmp_path / "pw").write_text("s3cret\r\n")
    access = Access.from_env(password_file=tmp_path / "pw", environ={"TUNER_SERVICE_DASHBOARD_USER": "ops"})
    assert (access.password, access.user, access.read_only) == ("s3cret", "ops", False)
    assert "s3cret" not in repr(access)
    out = subprocess.run([sys.executable, "-m", "tuner_service", "dashboard", "--password-file", str(tmp_path / "nope")],
                         cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not found" in out.stderr, out.stderr


# ---------------------------------------------------------------------------- production entry

REPO = Path(__file__).resolve().parents[1]


def gunicorn(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "dashboards/gunicorn.conf.py", "--workers", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**ENV, "TUNER_SERVICE_DASHBOARD_BIND": "127.0.0.1:0", **env},
    )


def gunicorn_base(proc: subprocess.Popen[str], seen: list[str] | None = None) -> str:
    """The URL gunicorn listens at, once its worker has booted (the lines read go to ``seen``)."""
    assert proc.stdout is not None
    seen = [] if seen is None else seen
    for line in proc.stdout:
        seen.append(line)
        if m := re.search(r"Listening at: (http://\S+)", line):
            base = m[1]
            break
    else:
        raise AssertionError("gunicorn exited before listening")
    for line in proc.stdout:  # the worker has booted once the master says so; then ask it
        seen.append(line)
        if "Booting worker" in line:
            break
    return base.replace("0.0.0.0", "127.0.0.1")


@pytest.mark.timeout(60)
def test_gunicorn_entry_serves_the_storage(demo: Demo) -> None:
    proc = gunicorn({"TUNER_SERVICE_STORAGE": demo.url, "TUNER_SERVICE_ARTIFACTS": str(demo.artifacts)})
    try:
        base = gunicorn_base(proc)
        status, body = get(f"{base}/api/studies")
        assert status == 200
        assert {s["study_name"] for s in json.loads(body)["study_summaries"]} == {"digits-demo", "digits-wide"}
        assert json.loads(get(f"{base}/api/meta")[1])["artifact_is_available"] is True
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.timeout(60)
def test_gunicorn_entry_with_login_and_read_only_on_all_interfaces(demo: Demo) -> None:
    before = snapshot(demo.url)
    proc = gunicorn({"TUNER_SERVICE_STORAGE": demo.url, "TUNER_SERVICE_DASHBOARD_BIND": "0.0.0.0:0",
                     "TUNER_SERVICE_DASHBOARD_PASSWORD": PASSWORD, "TUNER_SERVICE_DASHBOARD_READ_ONLY": "1"})
    seen: list[str] = []
    try:
        base = gunicorn_base(proc, seen)
        assert get(f"{base}/api/studies") == (401, b"login required\n")
        assert get(f"{base}/api/studies", auth=basic("tuner", PASSWORD))[0] == 200
        sid = demo.study._study_id
        assert get(f"{base}/api/studies/{sid}", method="DELETE", auth=f"Bearer {PASSWORD}")[0] == 403
    finally:
        proc.terminate()
        out = "".join(seen) + proc.communicate(timeout=30)[0]
    assert PASSWORD not in out
    assert "login required (user 'tuner'), read-only" in out, out
    assert snapshot(demo.url) == before


def test_gunicorn_entry_refuses_a_public_bind_without_a_login(demo: Demo) -> None:
    proc = gunicorn({"TUNER_SERVICE_STORAGE": demo.url, "TUNER_SERVICE_DASHBOARD_BIND": "0.0.0.0:0"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "refusing to serve the dashboard on 0.0.0.0 without a login" in errors[0], out
    assert "Listening at" not in out


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
