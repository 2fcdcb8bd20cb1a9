"""``fedsim report``: real runs, their report opened in Debian's headless Chromium.

The browser is driven by Selenium through Debian's chromedriver (never a browser a tool
downloads), offline, with a fresh profile; the page must show what the run recorded, log
no console error, and fetch nothing but itself. A full-page screenshot is kept in
``test-artifacts/`` (or ``$FEDSIM_TEST_ARTIFACTS``) for a person to look at.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, ROOT, fedsim, run_dir_of, write_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
ARTIFACTS = Path(os.environ.get("FEDSIM_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SITES = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="module")
def pca_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled three-site PCA example, run and compared with its centralised run."""
    workdir = tmp_path_factory.mktemp("report")
    shutil.copytree(ROOT / "examples" / "pca", workdir / "pca")
    config = workdir / "pca" / "fedsim.toml"
    text = config.read_text().replace('"../../apps/pca"', f'"{ROOT / "apps" / "pca"}"')
    config.write_text(f'output_dir = "{workdir / "runs"}"\n{text}')
    result = fedsim("run", "--compare", str(config))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "scripts/setup --tests installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def report_of(run_dir: Path, *args: str) -> Path:
    result = fedsim("report", str(run_dir), *args)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_file()
    return path


def open_page(driver: Any, path: Path) -> tuple[list[dict], list[str]]:
    """Load ``path``; (console entries, URLs of every request the page made)."""
    driver.get_log("browser")  # empty what earlier pages left
    driver.get_log("performance")
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    console = driver.get_log("browser")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return console, requests


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, not only the window, as a PNG artifact."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def texts(driver: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_the_report_shows_the_run_offline_without_errors(pca_run: Path, browser: Any) -> None:
    report = report_of(pca_run)
    assert report == pca_run / "report.html"
    console, requests = open_page(browser, report)
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    assert requests and {u for u in requests if not u.startswith("data:")} == {report.as_uri()}

    summary = json.loads((pca_run / "summary.json").read_text())
    assert summary["run_id"] in browser.title
    assert len(browser.find_elements("css selector", "section[id]")) == 6
    for section in ("timeline", "traffic", "latency", "memory", "comparison", "config"):
        assert browser.find_element("id", section).is_displayed()
    # every site in the sites table, with its recorded traffic
    rows = [r.split() for r in texts(browser, "body > table tbody tr")]
    assert [r[0] for r in rows] == list(SITES)
    for row in rows:
        site = summary["sites"][row[0]]
        assert row[2] == "finished"
        counts = ("messages_sent", "bytes_sent", "messages_received", "bytes_received")
        assert row[-4:] == [str(site[k]) for k in counts]
    # the timeline names every site; the traffic and memory charts are there
    timeline = browser.find_element("css selector", "#timeline svg").text
    assert all(site in timeline for site in SITES)
    assert len(browser.find_elements("css selector", "#traffic svg")) == 2
    assert "site-a" in browser.find_element("css selector", "#memory svg").text
    # one row per round of traffic.csv
    with open(pca_run / "traffic.csv", newline="") as handle:
        memos = {(r["step"], r["memo"] or "(no memo)") for r in csv.DictReader(handle)}
    rounds = [r.split()[:2] for r in texts(browser, "#traffic table tbody tr")]
    assert sorted(map(tuple, rounds)) == sorted(memos)
    # latency: one row per pair of sites that exchanged messages, with their count
    with open(pca_run / "traffic.csv", newline="") as handle:
        pairs: dict[tuple[str, str], int] = {}
        for r in csv.DictReader(handle):
            pairs[(r["sender"], r["receiver"])] = pairs.get((r["sender"], r["receiver"]), 0) + 1
    latency = [r.split() for r in texts(browser, "#latency tbody tr")]
    assert {(r[0], r[1]): int(r[2]) for r in latency} == pairs
    assert all(r[5] != "-" for r in latency)  # every message reached its app: a time shown
    # the comparison's measures, and its plot decoded and drawn
    comparison = json.loads((pca_run / "comparison.json").read_text())
    measures = [r.split()[0] for r in texts(browser, "#comparison tbody tr")]
    assert measures == [m["name"] for m in comparison["measures"]]
    drawn = browser.execute_script(
        "return [...document.images].map(i => i.complete && i.naturalWidth)"
    )
    assert len(drawn) == len(comparison["plots"]) >= 1 and all(drawn)
    assert 'name = "site-a"' in browser.find_element("css selector", "#config pre").text
    # nothing sticks out sideways
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )
    assert screenshot(browser, "report-pca.png").stat().st_size > 10_000


def test_a_failed_runs_report_says_what_failed(tmp_path: Path, browser: Any) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"hang": True}}, "clinic": {"behave": {"fail": True}}},
    )
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    report = report_of(run_dir_of(result), "--out", str(tmp_path / "failed.html"))
    assert report == tmp_path / "failed.html"
    console, _ = open_page(browser, report)
    assert [e for e in console if e["level"] == "SEVERE"] == []
    error = browser.find_element("css selector", ".error").text
    assert "site clinic failed" in error and "deliberate failure" in error
    statuses = {r.split()[0]: r.split()[2] for r in texts(browser, "body > table tbody tr")}
    assert statuses == {"hub": "stopped", "clinic": "failed"}
    assert "no comparison" in browser.find_element("id", "comparison").text
    screenshot(browser, "report-failed.png")


def test_a_run_without_a_timeline_or_memory_says_so(pca_run: Path, tmp_path: Path) -> None:
    """An older run has no states.csv; the report says what is missing instead of failing."""
    older = tmp_path / "older"
    shutil.copytree(pca_run, older, ignore=shutil.ignore_patterns("states.csv", "report.html"))
    summary = json.loads((older / "summary.json").read_text())
    for site in summary["sites"].values():
        site["memory"] = {}
    (older / "summary.json").write_text(json.dumps(summary))
    page = report_of(older).read_text()
    assert "No state of any site was recorded" in page and "No memory was recorded" in page
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page), "only data: and in-page links"


def test_an_unknown_run_is_an_error(tmp_path: Path) -> None:
    result = fedsim("report", "nosuch", "--runs", str(tmp_path))
    assert result.returncode == ExitCode.CONFIG
    assert "no run 'nosuch'" in result.stderr and result.stdout == ""
