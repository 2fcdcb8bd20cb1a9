"""What a person reads of a run: the console, the merged log, ``fedsim logs`` and traffic.csv."""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.logs import counted
from fedsim.progress import progress_text
from fedsim.sites.applines import app_line_levels
from tests.conftest import BEHAVE_APP, ROOT, fedsim, run_dir_of, write_run

LONG_NAME = "a-folder-name-long-enough-that-the-run-directory-path-passes-eighty-columns" * 2


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """Two sites of the behave app (no memos), recorded under a long path, output piped."""
    workdir = tmp_path_factory.mktemp("logs")
    config = write_run(
        workdir,
        BEHAVE_APP,
        {"hub": {"behave": {"value": 1}}, "clinic": {"behave": {"value": 2}}},
        output_dir=str(workdir / LONG_NAME / "runs"),
    )
    result = fedsim("run", str(config))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result), result


def test_piped_output_is_not_wrapped(good_run) -> None:
    run_dir, result = good_run
    assert len(str(run_dir)) > 160
    assert any(str(run_dir) in line for line in result.stderr.splitlines()), result.stderr


def test_an_unknown_site_is_an_error_naming_the_known_ones(good_run) -> None:
    run_dir, _ = good_run
    result = fedsim("logs", str(run_dir), "--site", "nosuch")
    assert result.returncode == 2
    assert "nosuch" in result.stderr and "hub" in result.stderr and "clinic" in result.stderr
    assert result.stdout == ""
    known = fedsim("logs", str(run_dir), "--site", "clinic")
    assert known.returncode == 0 and known.stdout
    assert {line.split()[1] for line in known.stdout.splitlines()} == {"clinic"}


def test_messages_without_memo_have_an_empty_memo(good_run) -> None:
    run_dir, _ = good_run
    with open(run_dir / "traffic.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "the behave app sends to the coordinator and broadcasts back"
    assert "None" not in {row["memo"] for row in rows}


def test_no_none_states_and_no_one_sites(good_run) -> None:
    run_dir, result = good_run
    log = (run_dir / "fedsim.log").read_text()
    assert ": None" not in result.stderr and ": None\n" not in log
    assert "2 sites" in log and "1 sites" not in log


def test_an_older_template_app_logs_no_none_states_and_empty_memos(tmp_path: Path) -> None:
    """The older template reports no message and no state, and sends memo null."""
    sites = {name: {"files": {"data.csv": "value\n1.0\n2.0\n"}} for name in ("hub", "clinic")}
    config = write_run(tmp_path, ROOT / "tests" / "apps" / "v1_mean", sites)
    result = fedsim("run", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    assert "None" not in result.stderr
    assert not [
        line
        for line in (run_dir / "fedsim.log").read_text().splitlines()
        if line.endswith(": None")
    ]
    with open(run_dir / "traffic.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["memo"] for row in rows} == {""}
    # the older template prints a line at every status poll: counted, not logged
    log = (run_dir / "fedsim.log").read_text()
    assert "GET /status" not in log
    counts = [int(n) for n in re.findall(r"app +INFO +(\d+) status polls of the agent left", log)]
    assert len(counts) == 2 and min(counts) > 10, counts


def test_progress_text_says_nothing_rather_than_none() -> None:
    assert progress_text({"message": None, "state": None}) is None
    assert progress_text({}) is None
    assert progress_text({"message": None, "state": "running"}) == "running"
    assert progress_text({"message": "fitting", "progress": 0.5}) == "fitting (50%)"
    assert progress_text({"progress": 1.0}) == "(100%)"
    assert counted(1, "site") == "1 site" and counted(3, "site") == "3 sites"


def test_a_failing_apps_traceback_is_logged_at_error(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {}}, "clinic": {"behave": {"fail": True}}},
    )
    result = fedsim("run", str(config))
    assert result.returncode == 4, result.stderr
    run_dir = run_dir_of(result)
    lines = [
        line.split(None, 4)
        for line in (run_dir / "fedsim.log").read_text().splitlines()
        if line.split()[1:3] == ["clinic", "app"]
    ]
    start = next(
        i
        for i, fields in enumerate(lines)
        if fields[4].endswith("Traceback (most recent call last):")
    )
    end = next(
        i for i, fields in enumerate(lines) if "RuntimeError: deliberate failure" in fields[4]
    )
    assert {fields[3] for fields in lines[start : end + 1]} == {"ERROR"}
    engine_info = [f for f in lines if "[Level: info]" in f[4] and "Traceback" not in f[4]]
    assert engine_info and {f[3] for f in engine_info} == {"INFO"}
    # the traceback is shown once, naming the app's file on this machine, not /app
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    host_frame = f'File "{BEHAVE_APP / "states.py"}", line'
    assert host_frame in result.stderr
    assert host_frame in (run_dir / "sites" / "clinic" / "site.log").read_text()
    assert 'File "/app/' not in (run_dir / "fedsim.log").read_text()
    assert "run failed: site clinic failed" in result.stderr


def test_app_line_levels() -> None:
    lines = [
        "[Time: 29.11.26 19:35:59] [Level: info] id: site-c",
        "[Time: 29.11.26 19:35:59] [Level: error] could not read data.csv",
        "[Time: 29.11.26 19:35:59] [Level: warning] few rows",
        "[Time: 29.11.26 19:35:59] [Level: debug] polling",
        "plain progress line",
        "Traceback (most recent call last):",
        '  File "/app/states.py", line 3, in run',
        "    raise ValueError('x')",
        "ValueError: x",
        "",
        "During handling of the above exception, another exception occurred:",
        "Traceback (most recent call last):",
        '  File "/app/main.py", line 1, in <module>',
        "KeyError: 'y'",
        "after the traceback",
        "[Time: 29.11.26 19:51:55] [Level: info] Traceback (most recent call last):",
        '  File "/app/states.py", line 63, in run',
        "RuntimeError: deliberate failure at clinic",
    ]
    e, w, i, d = logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG
    assert app_line_levels(lines) == [i, e, w, d, i, e, e, e, e, i, e, e, e, e, i, e, e, e]


def test_logs_piped_into_a_reader_that_stops_early_end_normally(good_run) -> None:
    """``fedsim logs | head`` or ``| grep -m1``: the closed pipe is the reader's choice."""
    run_dir, _ = good_run
    command = f'"{sys.executable}" -m fedsim logs "{run_dir}" | head -1'
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; for i in 1 2 3 4 5; do {command}; done"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5 and not result.stderr
