"""Configs and a HOME for fedsim run against the test's sshd hosts (``sshd_hosts.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import MEAN_APP
from tests.sshd_hosts import SshHost


def write_config(
    tmp_path: Path, sites: list[dict[str, Any]], head: str = "", name: str = "fedsim.toml"
) -> Path:
    """A config of the mean app with these sites (the first coordinates); ``head``: more
    top-level lines."""
    lines = [f'app = "{MEAN_APP}"', head]
    for i, site in enumerate(sites):
        lines.append("[[sites]]")
        if i == 0:
            lines.append("coordinator = true")
        for key, value in site.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_site(name: str, host: SshHost, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "location": f"ssh://{host.user}@{host.address}:{host.port}",
        "ssh_key": str(host.key),
        **extra,
    }


def make_home(tmp_path: Path, known_hosts: Path | None) -> Path:
    """A HOME for fedsim with ``.ssh/known_hosts`` copied from ``known_hosts`` (or none)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    if known_hosts is not None:
        shutil.copy(known_hosts, home / ".ssh" / "known_hosts")
    return home
