"""A run that goes wrong stops quickly, says why, and still keeps every site's record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from fedsim.errors import ExitCode
from tests.conftest import (
    BEHAVE_APP,
    fedsim,
    interrupt,
    run_dir_of,
    sandbox_processes,
    start_fedsim,
    write_run,
)

pytestmark = pytest.mark.usefixtures("no_leftover_sandboxes")


@pytest.mark.usefixtures("site_start")  # both start-ups of local sites
def test_a_failing_app_stops_the_run_and_names_the_site(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {
            "hub": {"behave": {"hang": True}},
            "clinic": {"behave": {"fail": True}},
            "lab": {"behave": {"hang": True}},
        },
    )
    started = time.monotonic()
    result = fedsim("run", str(config))
    elapsed = time.monotonic() - started
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    assert elapsed < 30, f"the run took {elapsed:.0f} s to notice the failure"
    assert "site clinic failed" in result.stderr
    assert "RuntimeError: deliberate failure at clinic" in result.stderr  # the log's tail
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["sites"]["clinic"]["status"] == "failed"
    assert {summary["sites"][s]["status"] for s in ("hub", "lab")} == {"stopped"}
    for site in ("hub", "clinic", "lab"):
        # every site's partial output and log are collected, the failing one's too
        assert (run_dir / "sites" / site / "output" / "partial.txt").read_text() == (
            f"{site} started\n"
        )
        assert (run_dir / "sites" / site / "site.log").stat().st_size > 0
    assert "deliberate failure" in (run_dir / "fedsim.log").read_text()


def test_timeout_stops_every_site(tmp_path: Path) -> None:
    config = write_run(
        tmp_path, BEHAVE_APP, {"hub": {"behave": {"hang": True}}, "clinic": {}}, timeout=6
    )
    started = time.monotonic()
    result = fedsim("run", str(config))
    elapsed = time.monotonic() - started
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert "timeout" in result.stderr and "6 s" in result.stderr
    assert elapsed < 6 + 20
    summary = json.loads((run_dir_of(result) / "summary.json").read_text())
    assert summary["status"] == "failed" and "timeout" in summary["error"]
    assert summary["sites"]["hub"]["status"] == "stopped"


@pytest.mark.usefixtures("site_start")  # both start-ups of local sites
def test_ctrl_c_stops_every_site_and_keeps_the_record(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"hang": True}}, "clinic": {"behave": {"hang": True}}},
    )
    process = start_fedsim("run", str(config))
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = list(runs.glob("*/sites/*/output/partial.txt"))
        if len(partial) == 2:
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the sites never started")
    follower = start_fedsim("logs", "--runs", str(runs), "--follow")
    time.sleep(1)
    assert follower.poll() is None  # still following the running run
    interrupt(process)
    stdout, stderr = process.communicate(timeout=30)
    followed, _ = follower.communicate(timeout=10)  # ends by itself once the run has ended
    assert "hub" in followed and "interrupted" in followed
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted" in stderr
    run_dir = Path(stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert {site["status"] for site in summary["sites"].values()} == {"stopped"}
    assert not [p for p in sandbox_processes() if str(tmp_path) in p]


@pytest.mark.usefixtures("site_start")  # both start-ups of local sites
def test_an_app_that_exits_without_finishing_fails_its_site(tmp_path: Path) -> None:
    app = tmp_path / "crash-app"
    app.mkdir()
    (app / "requirements.txt").write_bytes((BEHAVE_APP / "requirements.txt").read_bytes())
    (app / "main.py").write_text("import sys\nprint('cannot start: no licence')\nsys.exit(3)\n")
    config = write_run(tmp_path, app, {"hub": {}, "clinic": {}})
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED
    assert "cannot start: no licence" in result.stderr
    assert "exited with code 3" in result.stderr


def test_an_environment_that_cannot_be_built_is_reported_and_recorded(tmp_path: Path) -> None:
    app = tmp_path / "bad-app"
    app.mkdir()
    (app / "main.py").write_text("print('never runs')\n")
    (app / "requirements.txt").write_text("this-is-not-a-requirement-specifier==!!\n")
    config = write_run(tmp_path, app, {"hub": {}, "clinic": {}})
    result = fedsim("run", str(config), env={"FEDSIM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == ExitCode.ENVIRONMENT, result.stderr
    assert "installing" in result.stderr and "requirements.txt failed" in result.stderr
    run_dir = run_dir_of(result)  # printed last even though the run never started a site
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert {s["status"] for s in summary["sites"].values()} == {"pending"}
    status = fedsim("status", str(run_dir))
    assert status.returncode == 0 and "pending" in status.stdout


def test_an_app_reporting_error_without_finishing_fails_its_site_within_2_s(
    tmp_path: Path,
) -> None:
    config = write_run(
        tmp_path, BEHAVE_APP, {"hub": {}, "clinic": {"behave": {"error_state": True}}}
    )
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    assert "site clinic failed" in result.stderr
    assert "licence check failed" in result.stderr  # the app's message
    assert "cannot reach the licence server from clinic" in result.stderr  # its log's tail
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sites"]["clinic"]["status"] == "failed"
    reported = float((run_dir / "sites" / "clinic" / "output" / "error_at.txt").read_text())
    failed = datetime.fromisoformat(summary["sites"]["clinic"]["ended"]).timestamp()
    print(f"state error to site failed: {failed - reported:.2f} s")
    assert failed - reported < 2


def test_a_stalled_run_ends_and_says_where_each_site_waits(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"await_memo": "never-sent"}}, "clinic": {}},
        stall_timeout=3,
        timeout=120,
    )
    started = time.monotonic()
    result = fedsim("run", str(config))
    elapsed = time.monotonic() - started
    assert result.returncode == ExitCode.STALLED, result.stderr
    print(f"stalled run ended after {elapsed:.1f} s:\n{result.stderr}")
    assert elapsed < 60
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "no site changed state and no message moved for 3 s" in message
    assert "site hub (coordinator): running, app state 'initial' for" in message
    assert "site clinic: running, app state 'write' for" in message
    assert "0 messages waiting for it" in message
    assert "hint:" not in message  # two sites: not the lone coordinator's trap
    summary = json.loads((run_dir_of(result) / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("stalled")
    assert "site hub (coordinator)" in summary["error"]


def test_a_lone_coordinator_waiting_on_a_gather_gets_a_hint(tmp_path: Path) -> None:
    # behave broadcasts the sum without a memo, then awaits it: alone, the engine waits on
    # GATHERROUND2 while its own broadcast sits under None
    config = write_run(tmp_path, BEHAVE_APP, {"pooled": {}}, stall_timeout=3)
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.STALLED, result.stderr
    message = " ".join(result.stderr.split())
    assert "site pooled (coordinator): running, app state 'write'" in message
    assert "hint: a coordinator alone" in message and "explicit memo" in message


def wait_for_sites(process: subprocess.Popen[str], runs: Path, count: int) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = list(runs.glob("*/sites/*/output/partial.txt"))
        if len(partial) == count:
            return partial[0].parents[3]
        time.sleep(0.2)
    process.kill()
    pytest.fail("the sites never started")


def start_hanging_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    """A run of two hanging sites whose private temporary folder lies under the test's."""
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"hang": True}}, "clinic": {"behave": {"hang": True}}},
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    return process, wait_for_sites(process, tmp_path / "runs", 2), temp


def assert_stopped_and_recorded(run_dir: Path, temp: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]
    assert summary["ended"] is not None
    for site in ("hub", "clinic"):
        assert summary["sites"][site]["status"] == "stopped"
        assert "set up as" in (run_dir / "sites" / site / "site.log").read_text()
        assert (run_dir / "sites" / site / "results.zip").is_file()
    assert not list(temp.iterdir()), "the run left files in its temporary folder"
    assert not [p for p in sandbox_processes() if str(run_dir.parent.parent) in p]
    return summary


@pytest.mark.usefixtures("site_start")  # both start-ups of local sites
def test_sigterm_ends_a_run_as_ctrl_c_does(tmp_path: Path) -> None:
    process, run_dir, temp = start_hanging_run(tmp_path)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    print(f"SIGTERM to exit: {time.monotonic() - started:.1f} s")
    assert process.returncode == ExitCode.TERMINATED, stderr
    assert "ended by SIGTERM" in stderr
    assert Path(stdout.strip().splitlines()[-1]) == run_dir
    summary = assert_stopped_and_recorded(run_dir, temp)
    assert "SIGTERM" in summary["error"]


@pytest.mark.usefixtures("site_start")  # both start-ups of local sites
def test_signals_during_cleanup_do_not_cut_it_short(tmp_path: Path) -> None:
    process, run_dir, temp = start_hanging_run(tmp_path)
    interrupt(process)
    for _ in range(5):  # an impatient user: more Ctrl-C while the sites are being stopped
        time.sleep(0.05)
        interrupt(process)
    process.send_signal(signal.SIGHUP)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted (Ctrl-C)" in stderr
    assert Path(stdout.strip().splitlines()[-1]) == run_dir
    assert "already stopping" in (run_dir / "fedsim.log").read_text()
    assert_stopped_and_recorded(run_dir, temp)
