"""Many sites start a few at a time: an app's start-up is CPU-bound (it imports its
libraries), and a hundred at once on two cores reached the agent's start-up timeout
(measured: ``bench/bench_scale.py``). The run still starts every site, and only
``STARTING_AT_ONCE`` are ever between spawned and answering."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from fedsim.run import STARTING_AT_ONCE
from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run

SITES = STARTING_AT_ONCE * 2 + 1


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_sites_start_a_few_at_a_time_and_all_run(tmp_path: Path) -> None:
    names = [f"s{i}" for i in range(SITES)]
    config = write_run(
        tmp_path, BEHAVE_APP, {n: {"behave": {"value": float(i)}} for i, n in enumerate(names)}
    )
    result = fedsim("run", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    total = json.loads((run_dir / "sites" / "s0" / "output" / "sum.json").read_text())["sum"]
    assert total == sum(range(SITES))
    summary = json.loads((run_dir / "summary.json").read_text())
    # each site starts when spawned and is up when its agent set the app up (site.log)
    spans = []
    for name in names:
        started = stamp(summary["sites"][name]["started"])
        log = (run_dir / "sites" / name / "site.log").read_text().splitlines()
        up = next(stamp(line.split()[0]) for line in log if "set up as" in line)
        spans.append((started, up))
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    starting, most = 0, 0
    for _, change in events:
        starting += change
        most = max(most, starting)
    print(f"{SITES} sites, at most {most} starting at once (limit {STARTING_AT_ONCE})")
    assert 1 < most <= STARTING_AT_ONCE
