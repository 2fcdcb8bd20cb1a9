"""Shortening the engine's waits changes when things happen, never what is computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, fedsim, run_dir_of


@pytest.mark.slow
def test_shortened_waits_give_the_same_outputs_faster(tmp_path: Path) -> None:
    outputs = {}
    durations = {}
    for shorten in (True, False):
        workdir = tmp_path / f"shorten-{shorten}"
        shutil.copytree(ROOT / "examples" / "mean", workdir)
        config = workdir / "fedsim.toml"
        config.write_text(
            config.read_text()
            .replace('"../../apps/mean"', f'"{ROOT / "apps" / "mean"}"')
            .replace("shorten_waits = true", f"shorten_waits = {str(shorten).lower()}")
        )
        result = fedsim("run", str(config), cwd=config.parent)
        assert result.returncode == 0, result.stderr
        run_dir = run_dir_of(result)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["shorten_waits"] is shorten
        durations[shorten] = summary["duration_s"]
        outputs[shorten] = {
            p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted((run_dir / "sites").glob("*/output/*"))
        }
    assert len(outputs[True]) == 3
    assert outputs[True] == outputs[False]
    # the real engine sleeps 10 s before it reports finished; the shortened one does not
    assert durations[True] + 8 < durations[False], durations
