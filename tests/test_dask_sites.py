"""Sites on a Dask cluster, for real: a ``dask scheduler`` and ``dask worker`` processes
started by the test, each worker in a network namespace of the test's own that reaches the
hub (scheduler, relay, fedsim) and nothing else, fedsim run from the hub as a user would
(the relay listening on the hub's address for the workers). The workers share this machine's
files (fedsim and the app's environment at the same paths).
The mean example across workers gives the pooled means; a killed worker fails its site and
the run within seconds, naming both; no site's data moves between workers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT, fedsim, run_dir_of, write_config
from tests.sshd_hosts import SshNetwork, ssh_network

EXAMPLE = ROOT / "examples" / "mean"
TOLERANCE = 1e-12  # relative: sums of a few hundred floats in another order
DATA = {name: EXAMPLE / "data" / name for name in ("site-a", "site-b", "site-c")}
DASK = [sys.executable, "-m", "dask"]


@dataclass
class Cluster:
    address: str
    workers: dict[str, subprocess.Popen[bytes]]
    """Worker address -> its process."""
    network: SshNetwork
    relay_address: str
    """On the hub, where every worker's namespace is routed (and nowhere else)."""

    def fedsim(self, *args: str) -> list[str]:
        """fedsim's argv, run from the hub: the only network that reaches the cluster."""
        return self.network.in_hub([sys.executable, "-m", "fedsim", *args])

    def ask(self, code: str) -> Any:
        """What ``code`` (a function of a connected ``client``, as text) returns, as JSON,
        asked from the hub."""
        program = (
            "import json, sys\nfrom distributed import Client\n"
            f"with Client({self.address!r}, timeout='20s') as client:\n"
            f"    json.dump(({code})(client), sys.stdout)\n"
        )
        argv = self.network.in_hub([sys.executable, "-c", program])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler on the hub and three workers, each in a network namespace of its own
    (``sshd_hosts.SshNetwork``'s plain hosts: routed to the hub only, not to each other),
    all stopped and the namespaces gone afterwards."""
    with ssh_network() as network:
        hosts = network.add_plain_hosts(3)
        hub = hosts[0].hub_address
        scheduler_file = tmp_path / "scheduler.json"
        options = ["--host", hub, "--port", "0", "--no-dashboard"]
        scheduler = _start(
            network.in_hub([*DASK, "scheduler", *options, "--scheduler-file", str(scheduler_file)]),
            tmp_path / "scheduler.log",
        )
        processes = [scheduler]
        try:
            deadline = time.monotonic() + 30
            while not scheduler_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            address = json.loads(scheduler_file.read_text())["address"]
            workers = {}
            for i, host in enumerate(hosts):
                options = ["--host", host.address, "--no-nanny", "--nthreads", "1"]
                options += ["--no-dashboard", "--local-directory", str(tmp_path / f"w{i}")]
                argv = host.run_in([*DASK, "worker", address, *options])
                process = _start(argv, tmp_path / f"worker-{i}.log")
                processes.append(process)
                workers[host.address] = process
            cluster = Cluster(address, {}, network, f"{hub}:8443")
            addresses = cluster.ask(
                "lambda c: c.wait_for_workers(3, timeout=60) or list(c.nthreads())"
            )
            for worker in addresses:
                cluster.workers[worker] = workers[worker.split("//")[1].rsplit(":", 1)[0]]
            yield cluster
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def dask_config(
    tmp_path: Path, app: Path, dask: dict[str, Any], sites: list[dict[str, Any]]
) -> Path:
    entries = [{**site, "location": "dask"} for site in sites]
    entries[0]["coordinator"] = True
    return write_config(tmp_path, app, entries, dask=dask)


def assert_pooled_means(run_dir: Path) -> None:
    pooled = pd.concat(pd.read_csv(p / "data.csv") for p in DATA.values())
    expected = pooled.select_dtypes("number").mean()
    for site in DATA:
        got = pd.read_csv(run_dir / "sites" / site / "output" / "means.csv")
        got = got.set_index("column")["mean"]
        assert list(got.index) == list(expected.index), site
        relative = ((got - expected).abs() / expected.abs()).max()
        assert relative < TOLERANCE, (site, relative)
        assert (run_dir / "sites" / site / "results.zip").is_file()


def test_mean_across_workers_gives_the_pooled_means(tmp_path: Path, cluster: Cluster) -> None:
    sites = [{"name": name, "inputs": [str(path)]} for name, path in DATA.items()]
    dask = {"scheduler": cluster.address, "relay_address": cluster.relay_address}
    config = dask_config(tmp_path, MEAN_APP, dask, sites)
    result = subprocess.run(
        cluster.fedsim("run", str(config)), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    placements = {name: site["placement"] for name, site in summary["sites"].items()}
    assert {p["kind"] for p in placements.values()} == {"dask"}
    held = [p["worker"] for p in placements.values()]
    assert sorted(held) == sorted(cluster.workers), "one site per worker, each recorded"
    assert all(p["sandboxed"] for p in placements.values())
    # the workers share this machine's clock: what is measured is the round trip's error
    assert all(abs(p["clock_offset_s"]) < 1 for p in placements.values()), placements

    # placement is Dask's: every worker was given one site's worth of the resource
    resources = cluster.ask(
        "lambda c: c.run_on_scheduler("
        "lambda dask_scheduler: {a: w.resources for a, w in dask_scheduler.workers.items()})"
    )
    assert resources == {w: {"fedsim_site": 1} for w in cluster.workers}

    # the scheduler's whole graph for the run was one task per site, none depending on
    # another (a dependency would be a key of its own in the transition log)
    keys = cluster.ask(
        "lambda c: c.run_on_scheduler("
        "lambda dask_scheduler: sorted({str(t[0]) for t in dask_scheduler.transition_log}))"
    )
    run_id = run_dir.name
    assert keys == sorted(f"fedsim-{run_id}-{site}-site" for site in DATA), keys

    # only control messages and each site's own files went through the scheduler, between
    # it and that site's worker: no worker fetched anything from another; the one thing a
    # worker handed out is its site task's result (why it ended), to fedsim's client
    transfers = cluster.ask(
        "lambda c: c.run(lambda dask_worker: {"
        "'in': len(dask_worker.transfer_incoming_log),"
        "'out': [(t['who'], list(t['keys'])) for t in dask_worker.transfer_outgoing_log]})"
    )
    left = cluster.ask(
        "lambda c: c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))"
    )
    assert sorted(transfers) == sorted(cluster.workers)
    for worker, seen in transfers.items():
        assert seen["in"] == 0, worker
        for who, keys in seen["out"]:
            assert who not in cluster.workers, (worker, who)
            assert len(keys) == 1 and keys[0].endswith("-site"), (worker, keys)
    assert left == [], "every site's task ended with the run"


def test_a_killed_worker_fails_its_site_and_the_run_naming_both(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Sites that hang until stopped; the worker of site-b is killed once it runs."""
    sites = []
    for name in ("site-a", "site-b", "site-c"):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        (data / "config.yml").write_text("behave:\n  hang: true\n")
        sites.append({"name": name, "inputs": [str(data)]})
    dask = {"scheduler": cluster.address, "relay_address": cluster.relay_address}
    config = dask_config(tmp_path, BEHAVE_APP, dask, sites)
    process = subprocess.Popen(
        cluster.fedsim("run", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        runs = tmp_path / "runs"
        worker = None
        deadline = time.monotonic() + 120
        while worker is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            for log in runs.glob("*/fedsim.log"):  # site-b's agent set its app up
                lines = log.read_text().splitlines()
                if any("site-b" in line and "set up as" in line for line in lines):
                    summary = json.loads((log.parent / "summary.json").read_text())
                    worker = summary["sites"]["site-b"]["placement"]["worker"]
        assert worker is not None, process.communicate(timeout=60)
        cluster.workers[worker].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 4, err[-3000:]
    assert took < 15, f"the run took {took:.1f} s to fail after the worker died"
    assert "site site-b" in err and worker in err, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["sites"]["site-b"]["status"] == "failed"
    assert worker in summary["error"]
    for other in ("site-a", "site-c"):  # the others were stopped and their logs collected
        log = (run_dir / "sites" / other / "site.log").read_text()
        assert "set up as" in log, other


def test_a_cluster_started_for_the_run_holds_its_sites(tmp_path: Path) -> None:
    """``cluster`` names a deployment class: started with its options, closed at the end;
    two workers hold three sites (``sites_per_worker = 2``); the relay listens on the port
    the table names."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dask = {
        "cluster": "distributed.LocalCluster",
        "cluster_options": {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0"},
        "sites_per_worker": 2,
        "relay_address": f"127.0.0.1:{port}",
    }
    sites = [{"name": name, "inputs": [str(path)]} for name, path in DATA.items()]
    result = fedsim("run", str(dask_config(tmp_path, MEAN_APP, dask, sites)), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    held = [site["placement"]["worker"] for site in summary["sites"].values()]
    assert len(set(held)) == 2 and max(held.count(w) for w in held) == 2
