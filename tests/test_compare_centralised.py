"""The centralised run of a comparison: never a silent hang, a timeout that fits the
federated run, and visible in ``fedsim status`` while it runs. Real runs of the behave app,
whose broadcast has no memo: alone, the engine's coordinator waits for it for ever."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, fedsim, start_fedsim, write_run


def running_central(runs: Path) -> Path | None:
    for summary in runs.glob("*/centralised/*/summary.json"):
        if json.loads(summary.read_text())["status"] == "running":
            return summary.parent
    return None


def test_a_hanging_centralised_run_is_explained_and_shown_in_status(tmp_path: Path) -> None:
    sites = {"hub": {"behave": {"value": 1}}, "clinic": {"behave": {"value": 2}}}
    config = write_run(tmp_path, BEHAVE_APP, sites, timeout=3600, stall_timeout=6)
    process = start_fedsim("compare", str(config))
    runs = tmp_path / "runs"
    deadline = time.time() + 60
    while (central := running_central(runs)) is None:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    status = fedsim("status", "--runs", str(runs))
    assert status.returncode == 0, status.stderr
    assert f"centralised run {central.name}: running" in status.stdout, status.stdout

    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.STALLED, stderr
    assert "stalled" in stderr and "explicit memo" in stderr  # the hint, not just "stalled"
    # an hour's timeout is not waited for a run the federated one did in seconds
    resolved = tomllib.loads((central / "config.toml").read_text())
    assert resolved["timeout"] == 300 and resolved["stall_timeout"] == 6
    after = fedsim("status", "--runs", str(runs))
    assert f"centralised run {central.name}: failed" in after.stdout, after.stdout
    assert stdout.strip().splitlines()[-1] == str(central)
