"""The README's promises that code can check."""

from __future__ import annotations

import re

from fedsim.errors import ExitCode
from tests.conftest import ROOT


def test_every_exit_code_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", readme, flags=re.M)}
    assert documented == {int(code) for code in ExitCode}


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in (ROOT / "README.md").read_text()
