"""Sites on a Dask cluster, for real: a ``dask scheduler`` and ``dask worker`` processes
started by the test (on loopback: the workers share this machine's network; each site still
gets its own network namespace from the site host), fedsim run against them as a user would.
The mean example across workers gives the pooled means; a killed worker fails its site and
the run within seconds, naming both; no site's data moves between workers."""

from __future__ import annotations

import json
import os
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
from distributed import Client

from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT, fedsim, run_dir_of, write_config

EXAMPLE = ROOT / "examples" / "mean"
TOLERANCE = 1e-12  # relative: sums of a few hundred floats in another order
DATA = {name: EXAMPLE / "data" / name for name in ("site-a", "site-b", "site-c")}
DASK = [sys.executable, "-m", "dask"]


@dataclass
class Cluster:
    address: str
    workers: dict[str, subprocess.Popen[bytes]]
    """Worker address -> its process."""


def _start_worker(address: str, folder: Path, index: int) -> subprocess.Popen[bytes]:
    options = ["--host", "127.0.0.1", "--no-nanny", "--nthreads", "1", "--no-dashboard"]
    with (folder / f"worker-{index}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [*DASK, "worker", address, *options, "--local-directory", str(folder / f"w{index}")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and three workers of the test's own, stopped afterwards."""
    scheduler_file = tmp_path / "scheduler.json"
    options = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    with (tmp_path / "scheduler.log").open("wb") as log:
        scheduler = subprocess.Popen(
            [*DASK, "scheduler", *options, "--scheduler-file", str(scheduler_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    processes: list[subprocess.Popen[bytes]] = [scheduler]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        started = [_start_worker(address, tmp_path, i) for i in range(3)]
        processes += started
        with Client(address, timeout="20s") as client:
            client.wait_for_workers(3, timeout=60)
            by_pid = client.run(os.getpid)
        workers = {addr: next(p for p in started if p.pid == pid) for addr, pid in by_pid.items()}
        yield Cluster(address, workers)
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
    config = dask_config(tmp_path, MEAN_APP, {"scheduler": cluster.address}, sites)
    result = fedsim("run", str(config), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert_pooled_means(run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    placements = {name: site["placement"] for name, site in summary["sites"].items()}
    assert {p["kind"] for p in placements.values()} == {"dask"}
    held = [p["worker"] for p in placements.values()]
    assert sorted(held) == sorted(cluster.workers), "one site per worker, each recorded"
    assert all(p["sandboxed"] for p in placements.values())

    # only control messages and each site's own files went through the scheduler, between
    # it and that site's worker: no worker fetched anything from another; the one thing a
    # worker handed out is its site task's result (why it ended), to fedsim's client
    with Client(cluster.address, timeout="20s") as client:
        transfers = client.run(
            lambda dask_worker: {
                "in": len(dask_worker.transfer_incoming_log),
                "out": [(t["who"], list(t["keys"])) for t in dask_worker.transfer_outgoing_log],
            }
        )
        left = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
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
    config = dask_config(tmp_path, BEHAVE_APP, {"scheduler": cluster.address}, sites)
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", str(config)],
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
