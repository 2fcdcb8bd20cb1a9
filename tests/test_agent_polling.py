"""The agent's polling of its app adapts: fast after a change, backing off to at most 0.5 s
while nothing moves (so hundreds of idle sites cost little), and still quick to see an error.
Counted at the app itself (the behave test app counts its GET /api/status requests)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run

IDLE = 4.0
"""Seconds the app thinks: polling at the configured 20 ms throughout would be 200 requests."""


def test_an_idle_app_is_polled_rarely_and_the_run_still_gives_the_sum(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {
            "hub": {"behave": {"value": 1.5, "idle": IDLE}},
            "clinic": {"behave": {"value": 2.0, "idle": IDLE}},
        },
    )
    result = fedsim("run", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for site in ("hub", "clinic"):
        output = run_dir / "sites" / site / "output"
        assert json.loads((output / "sum.json").read_text())["sum"] == 3.5
        polls = int((output / "status_polls.txt").read_text())
        print(f"{site}: {polls} status polls in {IDLE:g} s idle")
        # backing off 1.5x from 20 ms to 0.5 s: about 8 polls to get there, then 2 a second
        assert polls <= 30, polls
        assert polls >= IDLE / 0.5 - 1, polls  # it never stopped asking


def test_an_error_after_a_long_idle_is_still_seen_within_2_s(tmp_path: Path) -> None:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {}, "clinic": {"behave": {"idle": IDLE, "error_state": True}}},
    )
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    reported = float((run_dir / "sites" / "clinic" / "output" / "error_at.txt").read_text())
    failed = datetime.fromisoformat(summary["sites"]["clinic"]["ended"]).timestamp()
    print(f"state error after {IDLE:g} s idle to site failed: {failed - reported:.2f} s")
    assert failed - reported < 2
