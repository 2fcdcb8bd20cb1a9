"""``fedsim doctor``: local sites checked here, SSH sites checked on real sshd hosts.

The SSH tests run fedsim inside the hub namespace of ``ssh_hosts`` (the only network from
which the hosts are reachable) with HOME pointed at a folder of the test, so that
``~/.ssh/config`` and ``~/.ssh/known_hosts`` are the test's, never the machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.errors import ExitCode
from tests.ssh_configs import make_home, ssh_site, write_config
from tests.sshd_hosts import SshNetwork

runner = CliRunner()


def doctor_in_hub(
    net: SshNetwork, config: Path, home: Path, *args: str, json_output: bool = True
) -> tuple[int, Any, float]:
    """Run ``fedsim doctor`` in the hub; exit code, parsed JSON (or the text) and seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "COLUMNS")}
    env.update(HOME=str(home), COLUMNS="200")
    argv = [sys.executable, "-m", "fedsim", "doctor", str(config), *args]
    if json_output:
        argv.append("--json")
    start = time.monotonic()
    result = subprocess.run(
        net.in_hub(argv), capture_output=True, text=True, env=env, timeout=120, check=False
    )
    elapsed = time.monotonic() - start
    if not json_output:
        return result.returncode, result.stdout + result.stderr, elapsed
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout), elapsed


def rows_by_site(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["site"]: row for row in report["sites"]}


def test_doctor_on_local_sites_says_ready(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "a"}, {"name": "b", "location": "local"}])
    result = runner.invoke(app, ["doctor", str(path), "--json"])
    assert result.exit_code == 0, result.output
    rows = rows_by_site(json.loads(result.stdout))  # logs go to stderr
    assert set(rows) == {"a", "b"}
    for row in rows.values():
        assert row["ready"] and row["reachable"] and row["sandbox"]
        assert row["python"] == ".".join(map(str, sys.version_info[:3]))
        assert row["disk_free"] > 0 and row["clock_offset"] == 0.0
    table = runner.invoke(app, ["doctor", str(path)])
    assert table.exit_code == 0 and "local" in table.output


def test_doctor_on_two_ssh_hosts(ssh_hosts: SshNetwork, tmp_path: Path) -> None:
    a, b = ssh_hosts(2)
    path = write_config(tmp_path, [ssh_site("alpha", a), ssh_site("beta", b, workdir="/srv/x")])
    home = make_home(tmp_path, ssh_hosts.known_hosts)
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == 0, report
    rows = rows_by_site(report)
    expected_python = a.ssh("python3 -c 'import platform; print(platform.python_version())'")
    has_bwrap = a.ssh("command -v bwrap").returncode == 0
    for row in rows.values():
        assert row["ready"] and row["reachable"], row
        assert row["python"] == expected_python.stdout.strip()
        assert row["disk_free"] > 0
        assert row["agent"] == "not provisioned"
        assert row["sandbox"] is has_bwrap
        assert abs(row["clock_offset"]) < 0.5  # the same clock, across a loopback-fast link
    code, text, _ = doctor_in_hub(ssh_hosts, path, home, json_output=False)
    assert code == 0 and "not provisioned" in text and f"ssh://root@{a.address}:22" in text
    print(text)  # the table, for the record (pytest -s)


def test_an_unknown_host_key_is_refused_unless_accept_new(
    ssh_hosts: SshNetwork, tmp_path: Path
) -> None:
    (a,) = ssh_hosts(1)
    home = make_home(tmp_path, None)  # an empty known_hosts: the host is unknown
    known = home / ".ssh" / "known_hosts"
    path = write_config(tmp_path, [ssh_site("alpha", a), {"name": "here"}])
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == ExitCode.NOT_READY
    rows = rows_by_site(report)
    assert rows["here"]["ready"] and not rows["alpha"]["ready"]
    assert not rows["alpha"]["reachable"]
    assert "unknown host key" in rows["alpha"]["problems"][0]
    assert "ssh_accept_new = true" in rows["alpha"]["problems"][0]
    assert not known.exists() or a.address not in known.read_text()

    path = write_config(tmp_path, [ssh_site("alpha", a, ssh_accept_new=True)])
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == 0, report
    assert "new host key trusted" in rows_by_site(report)["alpha"]["notes"][0]
    assert known.read_text().startswith(f"{a.address} ssh-ed25519 ")
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    # now known: a second run needs no trust on first use, and adds nothing
    path = write_config(tmp_path, [ssh_site("alpha", a)])
    before = known.read_text()
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == 0, report
    assert known.read_text() == before


def test_a_changed_host_key_is_refused_even_with_accept_new(
    ssh_hosts: SshNetwork, tmp_path: Path
) -> None:
    a, b = ssh_hosts(2)
    home = make_home(tmp_path, None)
    lines = ssh_hosts.known_hosts.read_text().splitlines()
    b_key = next(line for line in lines if line.startswith(f"{b.address} "))
    (home / ".ssh" / "known_hosts").write_text(b_key.replace(b.address, a.address, 1) + "\n")
    path = write_config(tmp_path, [ssh_site("alpha", a, ssh_accept_new=True)])
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == ExitCode.NOT_READY
    assert "host key differs" in rows_by_site(report)["alpha"]["problems"][0]


def test_a_cut_link_is_not_reachable_within_the_timeout(
    ssh_hosts: SshNetwork, tmp_path: Path
) -> None:
    a, b = ssh_hosts(2)
    home = make_home(tmp_path, ssh_hosts.known_hosts)
    path = write_config(tmp_path, [ssh_site("alpha", a), ssh_site("beta", b)])
    b.cut_link()
    code, report, elapsed = doctor_in_hub(ssh_hosts, path, home, "--timeout", "2")
    assert code == ExitCode.NOT_READY
    rows = rows_by_site(report)
    assert rows["alpha"]["ready"]  # the other site is checked all the same
    assert not rows["beta"]["reachable"] and "timed out" in rows["beta"]["problems"][0]
    assert elapsed < 20  # 2 s of timeout, plus starting Python and checking alpha


def test_an_alias_in_the_ssh_config_resolves(ssh_hosts: SshNetwork, tmp_path: Path) -> None:
    """``ssh://HOST`` with HOST a ``Host`` block of ~/.ssh/config: its address, port, user,
    key and known_hosts come from there, as with ``ssh HOST``."""
    (a,) = ssh_hosts(1)
    home = make_home(tmp_path, None)
    ssh_hosts.write_ssh_config(home / ".ssh" / "config", {"lab-alpha": a})
    path = write_config(tmp_path, [{"name": "alpha", "location": "ssh://lab-alpha"}])
    code, report, _ = doctor_in_hub(ssh_hosts, path, home)
    assert code == 0, report
    assert rows_by_site(report)["alpha"]["reachable"]
    other = tmp_path / "other_config"
    ssh_hosts.write_ssh_config(other, {"elsewhere": a})
    path = write_config(tmp_path, [{"name": "alpha", "location": "ssh://elsewhere"}])
    code, report, _ = doctor_in_hub(ssh_hosts, path, home, "--ssh-config", str(other))
    assert code == 0, report
