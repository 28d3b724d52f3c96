"""A real browser on the report and the dashboard: headless Chromium (Debian package) opens
report.html from disk with no console errors and rendered plots, and opens ``kvopt
dashboard`` on a study made here, finding the study with its three metric names.
Screenshots go to $KVOPT_TEST_ARTIFACTS (or the test's tmp_path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from browser_helpers import Browser, artifacts_dir, find_chromium
from kvopt.commands.report import report_command
from kvopt.report.dashboard import artifact_dir, publish_study
from kvopt.stored import load_study, storage_config
from report_helpers import HOSTILE, STUDY, free_port, hostile_copy, make_study

# Headless Chromium over the DevTools protocol, on a study made first.
pytestmark = [pytest.mark.browser, pytest.mark.slow]

METRICS = ("ttft_ms", "decode_tok_s", "peak_mem_mb")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_study(
        tmp_path_factory.mktemp("browser"), "study.n_trials=3", "confirm.rounds=2", "measure.max_repetitions=5"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    find_chromium()  # skip, or fail under KVOPT_REQUIRE_BROWSER=1, before starting anything
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def dashboard(study_run: dict) -> Iterator[str]:
    """``python -m kvopt dashboard`` on the study's storage; yields its base URL."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "kvopt", "dashboard", f"storage.url={study_run['url']}", f"port={port}"],
        cwd=study_run["root"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"{base}/api/studies")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"kvopt dashboard did not answer: {server.communicate()[0][-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def _study_id(base: str, name: str) -> int:
    studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
    return next(s["study_id"] for s in studies if s["study_name"] == name)


def test_report_html_opens_offline_with_rendered_plots(browser: Browser, study_run: dict, tmp_path: Path):
    report = study_run["run"] / "report.html"
    browser.send("Network.enable")
    browser.open(report.as_uri())
    assert browser.errors() == []
    sent = [e for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    requested = [e["params"]["request"]["url"] for e in sent]
    assert requested and all(u.startswith(("file://", "data:")) for u in requested), requested
    assert browser.evaluate("document.querySelectorAll('script').length") == 0
    results = load_study(STUDY, study_run["url"]).results
    for plot in ("pareto", "objectives"):
        marks = browser.evaluate(
            f"Array.from(document.querySelectorAll('#plot-{plot} svg .mark'))"
            ".map(m => {{ const r = m.getBoundingClientRect(); return [m.dataset.trial, r.width, r.height]; }})"
        )
        # One drawn mark per measured candidate, each with a visible size.
        assert sorted(int(m[0]) for m in marks) == sorted(r.number for r in results), plot
        assert all(w > 0 or h > 0 for _, w, h in marks), marks
    title = browser.evaluate("document.querySelector('h1').textContent")
    assert title == f"kvopt report: {STUDY}"
    assert browser.screenshot(artifacts_dir(tmp_path) / "report.png").stat().st_size > 10_000


def test_markup_in_stored_strings_stays_text_in_the_browser(browser: Browser, study_run: dict, tmp_path: Path):
    name = hostile_copy(study_run["url"])
    out = tmp_path / "hostile"
    try:
        assert report_command([f"study.name={name}", f"storage.url={study_run['url']}", f"out={out}"]) == 0
    finally:  # the dashboard tests list the studies in this storage
        optuna.delete_study(study_name=name, storage=study_run["url"])
    browser.open((out / "report.html").as_uri())
    assert browser.dialogs() == [] and browser.errors() == []
    assert browser.evaluate("document.querySelectorAll('script, img').length") == 0
    assert browser.evaluate("document.querySelector('h1').textContent") == f"kvopt report: {name}"
    assert HOSTILE in browser.evaluate("document.body.innerText")
    browser.screenshot(artifacts_dir(tmp_path) / "report-escaped.png")


def test_dashboard_study_has_note_report_artifacts_and_constraints(dashboard: str, study_run: dict):
    study_id = _study_id(dashboard, STUDY)
    detail = json.loads(_get(f"{dashboard}/api/studies/{study_id}"))
    assert detail["objective_names"] == list(METRICS)
    stored = load_study(STUDY, study_run["url"])
    assert stored.recommendation is not None
    assert f"## kvopt: {STUDY}" in detail["note"]["body"]
    assert stored.recommendation.result.label in detail["note"]["body"]
    names = sorted(a["filename"] for a in detail["artifacts"])
    assert names == sorted(["report.html", "report.md", "pareto.svg", "objectives.svg"])
    html = next(a for a in detail["artifacts"] if a["filename"] == "report.html")
    served = _get(f"{dashboard}/artifacts/{study_id}/{html['artifact_id']}")
    assert served == (study_run["run"] / "report.html").read_bytes()
    for trial in detail["trials"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert "runs" in attrs["constraints"], attrs.get("constraints")


def test_publishing_again_replaces_the_report_artifacts(dashboard: str, study_run: dict, tmp_path: Path):
    study = optuna.load_study(study_name=STUDY, storage=study_run["url"])
    store = artifact_dir(storage_config(study_run["url"]))
    assert store is not None and store == study_run["root"] / "kvopt-artifacts"
    before = sorted(p.name for p in store.iterdir())
    # Twice: the second re-publish reads metadata the first one removed (a crash seen with
    # optuna.artifacts.get_all_artifact_meta, which cannot read removed entries).
    for _ in range(2):
        publish_study(tmp_path, study, study_run["url"], storage_config(study_run["url"]))
    after = sorted(p.name for p in store.iterdir())
    assert len(after) == len(before) and after != before
    detail = json.loads(_get(f"{dashboard}/api/studies/{_study_id(dashboard, STUDY)}"))
    assert sorted(a["artifact_id"] for a in detail["artifacts"]) == after


def test_dashboard_in_the_browser_shows_the_study_its_metrics_and_note(
    browser: Browser, dashboard: str, study_run: dict, tmp_path: Path
):
    browser.open(f"{dashboard}/dashboard")
    browser.wait_for(f"document.body.innerText.includes({json.dumps(STUDY)})")
    study_id = _study_id(dashboard, STUDY)
    browser.open(f"{dashboard}/dashboard/studies/{study_id}")
    checks = " && ".join(f"document.body.innerText.includes({json.dumps(m)})" for m in METRICS)
    browser.wait_for(checks)
    assert STUDY in browser.evaluate("document.body.innerText")
    shots = artifacts_dir(tmp_path)
    assert browser.screenshot(shots / "dashboard.png").stat().st_size > 10_000
    # The study note (rendered markdown) and each trial's constraint values.
    rec = load_study(STUDY, study_run["url"]).recommendation
    assert rec is not None
    browser.open(f"{dashboard}/dashboard/studies/{study_id}/note")
    browser.wait_for(
        f"document.body.innerText.includes({json.dumps('kvopt: ' + STUDY)})"
        f" && document.body.innerText.includes({json.dumps(rec.result.label)})"
    )
    browser.screenshot(shots / "dashboard-note.png")
    browser.open(f"{dashboard}/dashboard/studies/{study_id}/trials")
    browser.wait_for("document.body.innerText.includes('constraints')")
    browser.screenshot(shots / "dashboard-trials.png")
