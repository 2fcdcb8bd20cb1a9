"""Sites on SSH hosts, for real: sshd hosts in namespaces of the test's own (``sshd_hosts.py``),
fedsim run from their hub with a HOME of the test's, the mean example checked against the
pooled data. The hosts live for the whole module: provisioning is paid once, and the later
tests see a provisioned host, as a user's second run would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
import yaml

from fedsim.appenv import cache_root
from fedsim.sites.remote_host import LOST_AFTER
from fedsim.sites.wheelhouse import agent_wheelhouse, app_wheelhouse
from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT, run_dir_of
from tests.ssh_configs import make_home, ssh_site, write_config
from tests.sshd_hosts import SshHost, SshNetwork, run_command, ssh_network
from tests.test_controller import workflow_config
from tests.test_hostile_apps import ESCAPES, hostile_run

EXAMPLE = ROOT / "examples" / "mean"
TOLERANCE = 1e-12  # relative: sums of a few hundred floats in another order
DATA = {name: EXAMPLE / "data" / name for name in ("site-a", "site-b", "site-c")}


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[SshNetwork, list[SshHost]]]:
    with ssh_network() as network:
        yield network, network(3)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, hosts, app_environment: Path) -> Path:
    """A HOME of the test's (its ~/.ssh), and the wheelhouses built beforehand: the hub has
    no network, and building them (like building the app's environment) may need pip's
    index, which only the test's own process may reach."""
    agent_wheelhouse()
    app_wheelhouse(app_environment)  # the mean app's and the behave app's: the same
    network, _ = hosts
    return make_home(tmp_path_factory.mktemp("ssh-home"), network.known_hosts)


def fedsim_in_hub(
    network: SshNetwork, home: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """fedsim as a user would run it, from the only network that reaches the hosts."""
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), FEDSIM_CACHE_DIR=str(cache_root()))
    return subprocess.run(
        network.in_hub([sys.executable, "-m", "fedsim", *args]),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def pooled_means() -> pd.Series:
    pooled = pd.concat(pd.read_csv(p / "data.csv") for p in DATA.values())
    return pooled.select_dtypes("number").mean()


def assert_pooled_means(run_dir: Path, sites: list[str]) -> None:
    expected = pooled_means()
    for site in sites:
        means = pd.read_csv(run_dir / "sites" / site / "output" / "means.csv")
        got = means.set_index("column")["mean"]
        assert list(got.index) == list(expected.index), site
        for column in expected.index:
            assert got[column] == pytest.approx(expected[column], rel=TOLERANCE), (site, column)


def sites_config(tmp_path: Path, sites: list[dict[str, Any]], head: str = "") -> Path:
    return write_config(
        tmp_path, sites, head=f'timeout = 300\noutput_dir = "{tmp_path}/runs"\n{head}'
    )


def test_the_mean_example_across_three_ssh_sites(hosts, home: Path, tmp_path: Path) -> None:
    network, (a, b, c) = hosts
    sites = [
        {**ssh_site("site-a", a), "inputs": [str(DATA["site-a"])]},
        {**ssh_site("site-b", b), "inputs": [str(DATA["site-b"])]},
        {**ssh_site("site-c", c), "inputs": [str(DATA["site-c"])]},
    ]
    result = fedsim_in_hub(network, home, "run", str(sites_config(tmp_path, sites)))
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir, list(DATA))
    summary = json.loads((run_dir / "summary.json").read_text())
    for name, host in zip(DATA, (a, b, c), strict=True):
        site = summary["sites"][name]
        assert site["status"] == "finished"
        placement = site["placement"]
        assert placement["kind"] == "ssh" and host.address in placement["location"]
        assert placement["sandboxed"] is True
        assert abs(placement["clock_offset_s"]) < 0.5  # one kernel's clock, a fast link
        assert placement["provisioning_s"] > 0  # at least the check that the agent is there
        log = (run_dir / "sites" / name / "site.log").read_text()
        assert "app" in log and "finished" in log.lower()
        assert (run_dir / "sites" / name / "results.zip").is_file()
    # nothing of the run stays at the hosts but the environments, for the next run
    for host in (a, b, c):
        left = host.ssh("ls ~/.fedsim/runs 2>/dev/null | wc -l").stdout.strip()
        assert left == "0", left


def test_local_and_ssh_sites_in_one_run(hosts, home: Path, tmp_path: Path) -> None:
    network, (a, _, _) = hosts
    sites = [
        {"name": "site-a", "inputs": [str(DATA["site-a"])]},
        {**ssh_site("site-b", a), "inputs": [str(DATA["site-b"])]},
        {"name": "site-c", "inputs": [str(DATA["site-c"])]},
    ]
    start = time.monotonic()
    result = fedsim_in_hub(network, home, "run", str(sites_config(tmp_path, sites)))
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir, list(DATA))
    summary = json.loads((run_dir / "summary.json").read_text())
    kinds = {n: s["placement"]["kind"] for n, s in summary["sites"].items()}
    assert kinds == {"site-a": "local", "site-b": "ssh", "site-c": "local"}
    print(f"mixed run: {time.monotonic() - start:.1f} s")


def test_two_sites_on_one_host_and_login(hosts, home: Path, tmp_path: Path) -> None:
    """Two sites of a run on the same host as the same user (two hospitals' data on one
    server): each has a folder of its own there, and the means are the pooled ones."""
    network, (a, b, _) = hosts
    placed = zip(DATA, (a, a, b), strict=True)
    sites = [{**ssh_site(name, host), "inputs": [str(DATA[name])]} for name, host in placed]
    result = fedsim_in_hub(network, home, "run", str(sites_config(tmp_path, sites)))
    assert result.returncode == 0, result.stderr[-4000:]
    assert_pooled_means(run_dir_of(result), list(DATA))
    assert a.ssh("ls ~/.fedsim/runs 2>/dev/null | wc -l").stdout.strip() == "0"


def test_a_host_whose_link_is_cut_fails_the_run_within_seconds(
    hosts, home: Path, tmp_path: Path
) -> None:
    """Cut, not a polite sshd exit: the host just stops answering. The run names the site
    and the host, and still collects the other sites' logs. Every site's app waits in its
    first state (the test app ``behave`` with ``hang``), so the cut falls mid-run. The host,
    whose sshd never learns that the connection is gone, hears no heartbeat and ends its
    site by itself, run folder and all, while still cut off."""
    network, (a, b, c) = hosts
    before = what_is_at(b)
    process = start_hanging_run(network, home, tmp_path, (a, b, c))
    try:
        run_dir = wait_until_running(tmp_path / "runs", "site-c", process)
        assert what_is_at(b) != before  # the check at the end can fail
        b.cut_link()
        cut = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        elapsed = time.monotonic() - cut
        deadline = cut + LOST_AFTER + 15
        while (left := what_is_at(b)) != before and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        b.restore_link()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    flat = " ".join(stderr.split())
    assert "site site-b" in flat and b.address in flat, stderr[-3000:]
    assert elapsed < 20, f"the run took {elapsed:.1f} s to notice the cut"
    print(f"cut noticed and the run ended {elapsed:.1f} s after the cut")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["sites"]["site-b"]["status"] == "failed"
    # the sites before and after the lost one: logs and outputs collected all the same
    for name in ("site-a", "site-c"):
        assert "app" in (run_dir / "sites" / name / "site.log").read_text()
        assert (run_dir / "sites" / name / "results.zip").is_file()
    assert left == before, "the cut-off host kept the run's site or its folder"


def test_an_orchestrator_killed_outright_leaves_nothing_at_its_hosts(
    hosts, home: Path, tmp_path: Path
) -> None:
    """fedsim killed with SIGKILL mid-run: each host's session ends with the connection, and
    its site host stops the site and removes the run's folder there (the token and sealed
    secrets in it), which after a ``close`` the orchestrator would have removed. (What an
    earlier test left at a host, a cut link's session among it, is not this run's.)"""
    network, (a, b, c) = hosts
    before = {host.address: what_is_at(host) for host in (a, b, c)}
    temp = tmp_path / "tmp"  # the orchestrator's private folder: nothing removes it after a kill
    temp.mkdir()
    process = start_hanging_run(network, home, tmp_path, (a, b, c), {"TMPDIR": str(temp)})
    try:
        wait_until_running(tmp_path / "runs", "site-c", process)
        during = {host.address: what_is_at(host) for host in (a, b, c)}
        process.kill()
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    for address, (folders, site_hosts) in during.items():  # the check below can fail
        assert len(folders - before[address][0]) == 1 and site_hosts == before[address][1] + 1
    deadline = time.monotonic() + 30
    while (after := {h.address: what_is_at(h) for h in (a, b, c)}) != before and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert after == before


def what_is_at(host: SshHost) -> tuple[set[str], int]:
    """The run folders in the login user's home at ``host``, and how many site hosts run in
    its namespace: seen from this machine, so also while its link is cut."""
    runs = host.home / ".fedsim" / "runs"
    folders = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    site_hosts = 0
    for pid in run_command("ip", "netns", "pids", host.namespace).stdout.split():
        try:
            site_hosts += b"fedsim.sites.remote_host" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
    return folders, site_hosts


def start_hanging_run(
    network: SshNetwork,
    home: Path,
    tmp_path: Path,
    hosts: tuple[SshHost, ...],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """fedsim run from the hub, a site on each host whose app waits in its first state (the
    test app ``behave`` with ``hang``) until stopped; ``env``: more of fedsim's environment."""
    sites: list[dict[str, Any]] = []
    for name, host in zip(("site-a", "site-b", "site-c"), hosts, strict=True):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        (data / "config.yml").write_text(yaml.safe_dump({"behave": {"value": 1, "hang": True}}))
        sites.append({**ssh_site(name, host), "inputs": [str(data)]})
    config = sites_config(tmp_path, sites).read_text().replace(str(MEAN_APP), str(BEHAVE_APP))
    (tmp_path / "fedsim.toml").write_text(config)
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment.update(HOME=str(home), FEDSIM_CACHE_DIR=str(cache_root()), **(env or {}))
    return subprocess.Popen(
        network.in_hub([sys.executable, "-m", "fedsim", "run", str(tmp_path / "fedsim.toml")]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def wait_until_running(runs: Path, site: str, process: subprocess.Popen[str]) -> Path:
    """The run's folder, once ``site``'s app has reported a state (it runs at its host)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for summary_file in runs.glob("*/summary.json"):
            try:
                summary = json.loads(summary_file.read_text())
            except ValueError:
                continue
            if summary["sites"][site]["status"] == "running":
                log = summary_file.parent / "sites" / site / "site.log"
                if log.is_file() and " app " in log.read_text():
                    return summary_file.parent
        time.sleep(0.2)
    stderr = process.stderr.read() if process.poll() is not None and process.stderr else ""
    raise AssertionError(f"{site} never ran: {stderr[-3000:]}")


def test_provisioning_twice_changes_nothing_the_second_time(
    ssh_hosts: SshNetwork, tmp_path: Path, app_environment: Path
) -> None:
    """A fresh host, with no route anywhere but the hub (so nothing can be downloaded there):
    the first `fedsim provision` installs the agent and the app's environment from the
    wheelhouses; the second finds both and changes nothing; doctor then sees the agent."""
    agent_wheelhouse()
    app_wheelhouse(app_environment)
    (host,) = ssh_hosts(1)
    routes = host.ssh("ip route").stdout
    assert "default" not in routes, routes  # air-gapped: only the hub's link
    home = make_home(tmp_path, ssh_hosts.known_hosts)
    config = sites_config(tmp_path, [ssh_site("far", host), {"name": "near"}])
    timings, outputs, states = [], [], []
    for _ in range(2):
        start = time.monotonic()
        result = fedsim_in_hub(ssh_hosts, home, "provision", str(config))
        timings.append(time.monotonic() - start)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(" ".join(result.stdout.split()))
        states.append(host.ssh("ls -l --full-time -R ~/.fedsim | md5sum").stdout)
    print(f"provisioning: cold {timings[0]:.1f} s, warm {timings[1]:.1f} s")
    assert "1 of 1 SSH sites changed" in outputs[0] and "installed" in outputs[0]
    assert "0 of 1 SSH sites changed" in outputs[1] and "installed" not in outputs[1]
    assert states[0] == states[1]  # not a file touched the second time
    envs = host.ssh("ls ~/.fedsim/envs").stdout.split()
    assert len([e for e in envs if e.startswith("agent-")]) == 1
    assert len([e for e in envs if e.startswith("app-")]) == 1
    # what runs is byte-compiled (the sandbox keeps the environment read-only), the
    # packages' own test suites are not (a third of the code, never imported by a run)
    compiled = host.ssh(
        "cd ~/.fedsim/envs/app-*/lib/python3*/site-packages && "
        "ls pandas/core/__pycache__/frame.*.pyc numpy/__pycache__/__init__.*.pyc | wc -l; "
        "find pandas/tests numpy -path '*/tests/*.pyc' | wc -l"
    ).stdout.split()
    assert compiled == ["2", "0"], compiled
    doctor = fedsim_in_hub(ssh_hosts, home, "doctor", str(config), "--json")
    assert doctor.returncode == 0, doctor.stderr
    rows = {row["site"]: row for row in json.loads(doctor.stdout)["sites"]}
    assert rows["far"]["agent"] not in (None, "not provisioned")


def test_a_two_step_workflow_on_ssh_sites(hosts, home: Path, tmp_path: Path) -> None:
    """The site stays at its host for both steps; step 2 takes step 1's output (downloaded
    here, uploaded again, as the run directory is the record) plus its own config."""
    network, (a, b, c) = hosts
    path = workflow_config(tmp_path, {"app": str(MEAN_APP)})
    config = tomllib.loads(path.read_text())
    for site, host in zip(config["sites"], (a, b, c), strict=True):
        site.update(ssh_site(site["name"], host))
    path.write_text(tomli_w.dumps(config))
    result = fedsim_in_hub(network, home, "run", str(path))
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = run_dir_of(result)
    for name in ("hub", "clinic", "lab"):
        step1 = run_dir / "sites" / name / "steps" / "1-scale"
        step2 = run_dir / "sites" / name / "steps" / "2-mean"
        assert (step1 / "output" / "data.csv").is_file()
        means = pd.read_csv(step2 / "output" / "means.csv").set_index("column")["mean"]
        # the mean of the doubled pooled data (x: 1,3,5,7; y: 2,4,6,8), as on local sites
        assert means["x"] == pytest.approx(8.0) and means["y"] == pytest.approx(10.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["finished", "finished"]
    assert {s["placement"]["kind"] for s in summary["sites"].values()} == {"ssh"}


def test_a_host_without_bubblewrap_runs_its_site_unsandboxed_and_says_so(
    hosts, home: Path, tmp_path: Path
) -> None:
    """Such a host gets a site with its own network and mounts but no sandbox: the run
    gives the same means, the console warns, the summary says ``sandboxed: false``."""
    network, (a, _, _) = hosts
    (bare,) = network.add_hosts(1, without=["/usr/bin/bwrap"])
    which = "python3 -c 'import shutil; print(shutil.which(\"bwrap\"))'"
    assert bare.ssh(which).stdout.strip() == "None"  # as fedsim looks for it
    shutil.copy(network.known_hosts, home / ".ssh" / "known_hosts")  # the new host's key too
    sites = [
        {**ssh_site("site-a", bare), "inputs": [str(DATA["site-a"])]},
        {**ssh_site("site-b", a), "inputs": [str(DATA["site-b"])]},
        {"name": "site-c", "inputs": [str(DATA["site-c"])]},
    ]
    result = fedsim_in_hub(network, home, "run", str(sites_config(tmp_path, sites)))
    assert result.returncode == 0, result.stderr[-4000:]
    flat = " ".join(result.stderr.split())
    assert "site site-a: no bubblewrap on this host: the site runs UNSANDBOXED" in flat
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir, list(DATA))
    placements = {
        name: site["placement"]
        for name, site in json.loads((run_dir / "summary.json").read_text())["sites"].items()
    }
    assert placements["site-a"]["sandboxed"] is False
    assert placements["site-b"]["sandboxed"] is True and placements["site-c"]["sandboxed"]


def test_hostile_apps_on_ssh_sites_escape_nowhere(hosts, home: Path, tmp_path: Path) -> None:
    """The hostile test app's escapes, at sites on SSH hosts: the site there is the local
    kind's, so every escape must be refused there too (and the host's own secrets, its other
    sites' inputs and the forward's socket stay out of reach)."""
    network, (a, b, _) = hosts
    path = hostile_run(tmp_path, 1, sites=2, linger=2, attempts=ESCAPES)
    config = tomllib.loads(path.read_text())
    for site, host in zip(config["sites"], (a, b), strict=True):
        site.update(ssh_site(site["name"], host))
    path.write_text(tomli_w.dumps(config))
    result = fedsim_in_hub(network, home, "run", str(path))
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = run_dir_of(result)
    for i in range(2):
        escapes = json.loads(
            (run_dir / "sites" / f"site-{i}" / "output" / "escapes.json").read_text()
        )
        assert set(ESCAPES) <= set(escapes)
        escaped = {k: v["detail"] for k, v in escapes.items() if k != "uid" and not v["held"]}
        assert not escaped, f"site-{i} escaped at its SSH host: {escaped}"
