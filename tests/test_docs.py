"""The README's promises that code can check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedsim.errors import ExitCode
from tests.conftest import ROOT


def test_every_exit_code_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", readme, flags=re.M)}
    assert documented == {int(code) for code in ExitCode}


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in (ROOT / "README.md").read_text()


def test_the_writing_an_app_walk_through_runs_as_written(tmp_path: Path) -> None:
    """Every ``sh`` block of docs/writing-an-app.md, in order, as one script in an empty
    folder, with this checkout's fedsim first on PATH."""
    doc = (ROOT / "docs" / "writing-an-app.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", doc, flags=re.M | re.S)
    assert len(blocks) >= 5
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    # what the text says happens: the memo-less centralised run stalls with a hint, the
    # comparison of the real app passes, the broken run fails with the user's file named
    assert "fedsim compare exited with 8" in result.stdout
    assert "explicit memo" in result.stderr
    assert "fedsim run exited with 4" in result.stdout
    assert f'File "{tmp_path}/broken/column-stats/states.py"' in result.stdout
    comparisons = sorted(tmp_path.glob("runs/*/comparison.json"))
    verdicts = [json.loads(path.read_text()) for path in comparisons]
    passed = [v for v in verdicts if v["passed"]]
    assert len(passed) == 1, verdicts  # study's (the no-memo one stalled before writing any)
    assert {m["name"] for m in passed[0]["measures"]} == {"diff:stats.csv"}
    # compared twice: once with its run, once more with --federated
    assert len(list(Path(passed[0]["federated_run"], "centralised").glob("*/summary.json"))) == 2
