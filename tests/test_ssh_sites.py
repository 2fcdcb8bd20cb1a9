"""Sites on SSH hosts, for real: sshd hosts in namespaces of the test's own (``sshd_hosts.py``),
fedsim run from their hub with a HOME of the test's, the mean example checked against the
pooled data. The hosts live for the whole module: provisioning is paid once, and the later
tests see a provisioned host, as a user's second run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim.appenv import cache_root
from fedsim.sites.wheelhouse import agent_wheelhouse, app_wheelhouse
from tests.conftest import ROOT, run_dir_of
from tests.ssh_configs import make_home, ssh_site, write_config
from tests.sshd_hosts import SshHost, SshNetwork, ssh_network

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
    app_wheelhouse(app_environment)
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


def test_a_host_whose_link_is_cut_fails_the_run_within_seconds(
    hosts, home: Path, tmp_path: Path
) -> None:
    """Cut, not a polite sshd exit: the host just stops answering. The run names the site
    and the host, and still collects the other sites' logs."""
    network, (a, b, c) = hosts
    slow = "shorten_waits = false\n"
    sites = [
        {**ssh_site("site-a", a), "inputs": [str(DATA["site-a"])]},
        {**ssh_site("site-b", b), "inputs": [str(DATA["site-b"])]},
        {**ssh_site("site-c", c), "inputs": [str(DATA["site-c"])]},
    ]
    config = sites_config(tmp_path, sites, head=slow)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), FEDSIM_CACHE_DIR=str(cache_root()))
    process = subprocess.Popen(
        network.in_hub([sys.executable, "-m", "fedsim", "run", str(config)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        runs = tmp_path / "runs"
        deadline = time.monotonic() + 240
        started = None
        while time.monotonic() < deadline and started is None:
            for summary_file in runs.glob("*/summary.json"):
                try:
                    summary = json.loads(summary_file.read_text())
                except ValueError:
                    continue
                if summary["sites"]["site-c"]["status"] == "running":
                    started = summary_file.parent
            time.sleep(0.2)
        assert started is not None, "site-c never started"
        c.cut_link()
        cut = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        elapsed = time.monotonic() - cut
    finally:
        c.restore_link()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    flat = " ".join(stderr.split())
    assert "site site-c" in flat and c.address in flat, stderr[-3000:]
    assert elapsed < 20, f"the run took {elapsed:.1f} s to notice the cut"
    summary = json.loads((started / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["sites"]["site-c"]["status"] == "failed"
    for name in ("site-a", "site-b"):
        assert (started / "sites" / name / "site.log").read_text().strip()
