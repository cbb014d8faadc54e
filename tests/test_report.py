"""The static HTML report: every plot, the best trials, plotly.js inline once, opens offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ENV
from dashboard_support import BEST_NUMBER, CHROMIUM, CHROMIUM_ARGS, DISTRIBUTIONS, NO_CHROMIUM, POINTS, make_study

from tuner_service.errors import BadInput
from tuner_service.report import write_report

SECTIONS = ["Optimization history", "Parallel coordinates", "Parameter importances",
            "Intermediate values (objective per epoch)"]
PLOT_TITLES = ["Optimization History Plot", "Parallel Coordinate Plot", "Hyperparameter Importances",
               "Intermediate Values Plot"]


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    make_study(optuna.storages.RDBStorage(url), "digits-demo")
    return url


def test_report_has_every_plot_best_trials_and_no_cdn(db: str, tmp_path: Path) -> None:
    out = write_report("digits-demo", db, tmp_path / "reports" / "r.html")  # parent created
    html = out.read_text(encoding="utf-8")
    for section, title in zip(SECTIONS, PLOT_TITLES, strict=True):
        assert f"<h2>{section}</h2>" in html and title in html
    assert 'class="skip"' not in html  # nothing skipped with five trials and three params
    assert not re.search(r"<script[^>]*\bsrc=", html), "the report must not load scripts from anywhere"
    assert html.count("plotly.js v") == 1  # plotly.js embedded once, not once per plot
    assert html.count('class="plotly-graph-div"') == 4

    # The best-trials table: ranked, the best trial first with its parameters and best epoch.
    table = html.split("<h2>Best trials (top 5)</h2>", 1)[1].split("</table>", 1)[0]
    first_row = table.split("<tr>")[2]
    best = POINTS[BEST_NUMBER]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", first_row)
    assert cells[:2] == ["1", str(BEST_NUMBER)] and cells[3] == "5"
    assert {str(v) for v in best.values()} <= set(cells[4:])
    assert "<th>val_accuracy</th>" in table and "<th>learning_rate</th>" in table
    assert "sklearn:digits (classification); train 1077, validation 360, test 360" in html


def test_intermediate_values_have_a_legend(db: str, tmp_path: Path) -> None:
    html = write_report("digits-demo", db, tmp_path / "r.html").read_text(encoding="utf-8")
    plot = html.split("<h2>Intermediate values (objective per epoch)</h2>", 1)[1].split("</section>", 1)[0]
    assert '"showlegend":true' in plot.replace(" ", "")
    assert re.findall(r'"name":"(trial \d+ \(\w+\))"', plot) == [f"trial {n} (complete)" for n in range(len(POINTS))]


def test_report_cli_prints_no_optuna_warnings_and_keeps_them_in_the_report(tmp_path: Path) -> None:
    """A parameter set in one trial only makes Optuna's importance code warn; the warning belongs
    beside the importance plot, not on the terminal."""
    from optuna.distributions import CategoricalDistribution

    url = f"sqlite:///{tmp_path / 'w.db'}"
    study = make_study(optuna.storages.RDBStorage(url), "conditional")
    study.add_trial(optuna.trial.create_trial(
        params={**POINTS[0], "dropout": "yes"}, value=0.7,
        distributions={**DISTRIBUTIONS, "dropout": CategoricalDistribution(["yes", "no"])}))
    out = subprocess.run([sys.executable, "-m", "tuner_service", "report", "conditional", "--storage", url,
                          "-o", str(tmp_path / "w.html")], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    html = (tmp_path / "w.html").read_text(encoding="utf-8")
    importances = html.split("<h2>Parameter importances</h2>", 1)[1].split("</section>", 1)[0]
    assert "Optuna: Some regimes for parameter `dropout` have less than 2 trials." in importances


def test_report_skips_what_cannot_be_drawn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    make_study(optuna.storages.RDBStorage(url), "one-param", points=[{"units": 32}, {"units": 64}])
    html = write_report("one-param", url, tmp_path / "one.html").read_text()
    assert "Only one parameter is tuned" in html
    assert html.count("plotly.js v") == 1 and html.count('class="plotly-graph-div"') == 3

    make_study(optuna.storages.RDBStorage(url), "single", points=[{"units": 32, "learning_rate": 0.01}])
    html = write_report("single", url, tmp_path / "single.html").read_text()
    assert html.count("Needs at least two completed trials.") == 2


def test_report_bad_input(db: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no study named 'nope'; studies here: digits-demo"):
        write_report("nope", db, tmp_path / "x.html")
    with pytest.raises(BadInput, match="no database at"):
        write_report("digits-demo", f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "missing.db").exists()


def test_report_cli(db: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tuner_service", "report", "digits-demo", "--storage", db,
                          "-o", str(tmp_path / "cli.html")], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "report written to" in out.stdout and (tmp_path / "cli.html").stat().st_size > 1_000_000


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
@pytest.mark.timeout(120)
def test_report_renders_offline_in_chromium(db: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = write_report("digits-demo", db, tmp_path / "r.html")
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            # Offline: refuse every request that is not the file itself.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (requested.append(route.request.url), route.abort()))
            page.goto(report.as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4",
                                   timeout=30_000)
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            browser.close()
    assert requested == []
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")
