"""A site that reaches for more than its share is stopped at its limits, and says which."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import fedsim, run_dir_of
from tests.test_hostile_apps import hostile_run

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here"),
    pytest.mark.usefixtures("site_start"),  # both start-ups of local sites
]


def escapes(run_dir: Path, site: str) -> dict:
    return json.loads((run_dir / "sites" / site / "output" / "escapes.json").read_text())


def test_a_fork_bomb_and_a_full_tmp_are_held_and_the_run_ends(tmp_path: Path) -> None:
    config = hostile_run(
        tmp_path,
        port=1,
        sites=2,
        top={"limits": {"processes": 64, "tmp": "16MiB"}},
        attempts=["fork_bomb", "fill_tmp"],
    )
    result = fedsim("run", str(config), timeout=180)
    assert result.returncode == 0, result.stderr
    for site in ("site-0", "site-1"):
        seen = escapes(run_dir_of(result), site)
        forked = int(seen["fork_bomb"]["detail"].split()[1])
        assert forked < 64, seen["fork_bomb"]
        written = int(seen["fill_tmp"]["detail"].split()[1])
        assert written <= 16, seen["fill_tmp"]


def test_a_site_over_its_memory_limit_fails_naming_the_limit(tmp_path: Path) -> None:
    config = hostile_run(
        tmp_path,
        port=1,
        sites=2,
        top={"limits": {"memory": "256MiB"}},
        attempts=["capabilities"],
        per_site={1: {"attempts": ["allocate"]}},
    )
    result = fedsim("run", str(config), timeout=180)
    assert result.returncode == 4, result.stderr
    assert "site site-1 failed (exceeded its memory limit of 256 MiB)" in result.stderr
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["sites"]["site-1"]["status"] == "failed"
    # everything else is still collected
    assert (run_dir / "sites" / "site-0" / "site.log").stat().st_size > 0
    assert (run_dir / "sites" / "site-1" / "results.zip").is_file()


def test_a_site_over_its_output_limit_fails_naming_the_limit(tmp_path: Path) -> None:
    config = hostile_run(
        tmp_path,
        port=1,
        sites=2,
        attempts=["capabilities"],
        per_site={1: {"attempts": ["big_output"], "linger": 0}},
    )
    toml = config.read_text().replace(
        '[[sites]]\nname = "site-1"', '[[sites]]\nname = "site-1"\nlimits = { output = "64MiB" }'
    )
    config.write_text(toml)
    result = fedsim("run", str(config), timeout=180)
    assert result.returncode == 4, result.stderr
    assert "site site-1 failed (wrote more than its output limit of 64 MiB)" in result.stderr
    written = sum(p.stat().st_size for p in (run_dir_of(result) / "sites" / "site-1").rglob("*"))
    assert written < 1024 * 2**20  # stopped long before its 1.5 GiB


def test_the_cpu_limit_caps_what_a_site_gets(tmp_path: Path) -> None:
    """Two busy processes for 2 s would use about 2 s of cpu on this 2-core machine (more
    when idle); a site limited to half a core gets about 1 s."""
    config = hostile_run(
        tmp_path, port=1, sites=1, top={"limits": {"cpu": 0.5}}, attempts=["burn_cpu"]
    )
    result = fedsim("run", str(config), timeout=180)
    assert result.returncode == 0, result.stderr
    used = float(escapes(run_dir_of(result), "site-0")["burn_cpu"]["detail"].split()[1])
    assert used < 1.4, f"half a core for 2 s gave {used:.2f} s of cpu"
