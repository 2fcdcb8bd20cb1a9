"""A site's secrets reach its own app and nothing else: not other sites, not the record."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run


def test_each_app_sees_only_its_own_secrets(tmp_path: Path) -> None:
    secrets = {"hub": "hub-password-7f3a", "clinic": "clinic-token-91bc"}
    sites = {}
    for site, value in secrets.items():
        env_file = tmp_path / f"{site}.env"
        env_file.write_text(f"FEDSIM_SECRET_{site.upper()}={value}\n")
        env_file.chmod(0o600)
        sites[site] = {"env_file": str(env_file), "behave": {"report_env": "FEDSIM_SECRET"}}
    result = fedsim("run", str(write_run(tmp_path, BEHAVE_APP, sites)))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for site, value in secrets.items():
        seen = json.loads((run_dir / "sites" / site / "output" / "env.json").read_text())
        assert seen == {f"FEDSIM_SECRET_{site.upper()}": value}
    # the app wrote its own secret to its own output on purpose; nothing else holds one
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name not in ("env.json", "results.zip"):
            text = path.read_text(errors="replace")
            for value in secrets.values():
                assert value not in text, f"{path} holds a secret"
    assert all(v not in result.stdout + result.stderr for v in secrets.values())
