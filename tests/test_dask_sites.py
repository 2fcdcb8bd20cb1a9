"""Sites on a Dask cluster, for real: a ``dask scheduler`` and ``dask worker`` processes
started by the test, each worker in a network namespace of the test's own that reaches the
hub (scheduler, relay, fedsim) and nothing else, fedsim run from the hub as a user would
(the relay listening on the hub's address for the workers). The workers share this machine's
files (fedsim and the app's environment at the same paths): ``dask_cluster.py``.
The mean example across workers gives the pooled means; a killed worker fails its site and
the run within seconds, naming both; no site's data moves between workers."""

from __future__ import annotations

import json
import os
import platform
import secrets as secrets_module
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsim import __version__ as fedsim_version
from fedsim.appenv import COMPLETE_MARKER, cache_root
from fedsim.sites.wheelhouse import app_wheelhouse
from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT, fedsim, run_dir_of, write_config
from tests.dask_cluster import Cluster, dask_cluster

EXAMPLE = ROOT / "examples" / "mean"
TOLERANCE = 1e-12  # relative: sums of a few hundred floats in another order
DATA = {name: EXAMPLE / "data" / name for name in ("site-a", "site-b", "site-c")}


@pytest.fixture(scope="module", autouse=True)
def app_wheels(app_environment: Path) -> None:
    """The app environment's wheelhouse, which the workers install from, built beforehand:
    fedsim runs from the hub, which has no network, and building may need pip's index."""
    app_wheelhouse(app_environment)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler on the hub and three workers, each in a namespace of its own."""
    with dask_cluster(tmp_path, 3) as running:
        yield running


def dask_config(
    tmp_path: Path, app: Path, dask: dict[str, Any], sites: list[dict[str, Any]]
) -> Path:
    entries = [{**site, "location": "dask"} for site in sites]
    entries[0]["coordinator"] = True
    return write_config(tmp_path, app, entries, dask=dask)


def run_on(cluster: Cluster, tmp_path: Path, app: Path, sites: list[dict[str, Any]]) -> Path:
    """fedsim run from the hub with these sites on the cluster; its run folder."""
    config = dask_config(tmp_path, app, cluster.table(), sites)
    argv = cluster.fedsim("run", str(config))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir_of(result)


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


def test_mean_across_workers_gives_the_pooled_means(
    tmp_path: Path, cluster: Cluster, app_environment: Path
) -> None:
    sites = [{"name": name, "inputs": [str(path)]} for name, path in DATA.items()]
    run_dir = run_on(cluster, tmp_path, MEAN_APP, sites)
    assert_pooled_means(run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    placements = {name: site["placement"] for name, site in summary["sites"].items()}
    assert {p["kind"] for p in placements.values()} == {"dask"}
    held = [p["worker"] for p in placements.values()]
    assert sorted(held) == sorted(cluster.workers), "one site per worker, each recorded"
    assert all(p["sandboxed"] for p in placements.values())
    # the workers share this machine's clock: the time they answered lies within the round
    # trip, so no offset is measured (one within half the round trip counts as none)
    assert all(p["clock_offset_s"] == 0 and p["clock_rtt_s"] > 0 for p in placements.values())
    # the app ran in an environment each worker made from the shipped wheelhouse, in its
    # own cache, not in the one this machine built
    wheels = app_wheelhouse(app_environment)
    made = cache_root() / "dask-worker" / "envs" / wheels.key
    assert all(p["app_envs"] == [str(made)] for p in placements.values()), placements
    assert (made / COMPLETE_MARKER).is_file()

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


def start_hanging_run(
    tmp_path: Path, cluster: Cluster, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """fedsim run from the hub with three sites whose apps hang until stopped (``env``: more
    of fedsim's environment)."""
    sites = []
    for name in ("site-a", "site-b", "site-c"):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        (data / "config.yml").write_text("behave:\n  hang: true\n")
        sites.append({"name": name, "inputs": [str(data)]})
    config = dask_config(tmp_path, BEHAVE_APP, cluster.table(), sites)
    argv = cluster.fedsim("run", str(config))
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_until_set_up(
    tmp_path: Path, process: subprocess.Popen[str], sites: tuple[str, ...]
) -> dict[str, Any]:
    """Once the agents of ``sites`` set their apps up: the run's summary then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        for log in (tmp_path / "runs").glob("*/fedsim.log"):
            lines = log.read_text().splitlines()
            if all(any(s in line and "set up as" in line for line in lines) for s in sites):
                summary = json.loads((log.parent / "summary.json").read_text())
                if all(summary["sites"][s]["placement"] for s in sites):  # written by now
                    return summary
    raise AssertionError(process.communicate(timeout=60))


def test_a_killed_worker_fails_its_site_and_the_run_naming_both(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Sites that hang until stopped; the worker of site-b is killed once it runs."""
    process = start_hanging_run(tmp_path, cluster)
    try:
        summary = wait_until_set_up(tmp_path, process, ("site-b",))
        worker = summary["sites"]["site-b"]["placement"]["worker"]
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
    # its site host outlived the worker: on losing it, it removed the run's folder there (the
    # token in it); the others' were removed as the run closed them
    assert_nothing_left(cluster)


def test_an_orchestrator_that_dies_leaves_nothing_on_the_workers(
    tmp_path: Path, cluster: Cluster
) -> None:
    """fedsim killed outright while its sites run: the scheduler lets go of their tasks,
    which stop their sites and end within seconds; no site host is left at any worker."""
    temp = tmp_path / "tmp"  # the orchestrator's private folder: nothing removes it after a kill
    temp.mkdir()
    process = start_hanging_run(tmp_path, cluster, {"TMPDIR": str(temp)})
    try:
        wait_until_set_up(tmp_path, process, ("site-a", "site-b", "site-c"))
        hosts = [p for w in cluster.workers.values() for p in child_pids(w.pid)]
        assert len(hosts) == 3, "one site host per site, each under its worker"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    deadline = time.monotonic() + 20
    tasks = None
    while time.monotonic() < deadline:
        tasks = cluster.ask(
            "lambda c: c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))"
        )
        left = [p for w in cluster.workers.values() for p in child_pids(w.pid)]
        if not tasks and not left:
            break
        time.sleep(1)
    assert tasks == [] and left == [], (tasks, left)
    assert all(w.poll() is None for w in cluster.workers.values()), "the workers stay"
    assert_nothing_left(cluster)


def assert_nothing_left(cluster: Cluster) -> None:
    """No site's folder is left at any worker (the site host removes it, or its task)."""
    deadline = time.monotonic() + 20
    while (left := [p for t in cluster.temp.values() for p in t.iterdir()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert left == [], left


def child_pids(pid: int) -> list[int]:
    """The living children of ``pid`` (a worker's: its sites' hosts)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


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


def test_secrets_cross_the_scheduler_sealed_to_their_site(tmp_path: Path) -> None:
    """Every value the scheduler's queues received is recorded: the sites' env files and
    relay tokens are in none of the requests (only sealed to the site's task), and each
    site's app still sees its own secret and nobody else's."""
    secrets = {"site-a": secrets_module.token_hex(16), "site-b": secrets_module.token_hex(16)}
    sites = []
    for name in ("site-a", "site-b", "site-c"):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        (data / "config.yml").write_text("behave:\n  report_env: FEDSIM_SECRET\n")
        site: dict[str, Any] = {"name": name, "inputs": [str(data)]}
        if name in secrets:
            env_file = tmp_path / f"{name}.env"
            env_file.write_text(f"FEDSIM_SECRET_{name[-1].upper()}={secrets[name]}\n")
            env_file.chmod(0o600)
            site["env_file"] = str(env_file)
        sites.append(site)
    record = tmp_path / "queues.jsonl"
    with dask_cluster(tmp_path, 3, record_queues=record) as cluster:
        run_dir = run_on(cluster, tmp_path, BEHAVE_APP, sites)
    for name in ("site-a", "site-b", "site-c"):
        seen = json.loads((run_dir / "sites" / name / "output" / "env.json").read_text())
        expected = {f"FEDSIM_SECRET_{name[-1].upper()}": secrets[name]} if name in secrets else {}
        assert seen == expected, name

    puts = [json.loads(line) for line in record.read_text().splitlines()]
    requests = [p["data"] for p in puts if p["queue"].endswith("-requests")]
    spawns = [r for r in requests if "'op': 'spawn'" in r]
    assert len(spawns) == 3, requests[:3]
    assert all("'token_sealed': b" in r and "'token':" not in r for r in spawns)
    for value in secrets.values():
        assert not any(value in r for r in requests), "a secret crossed the scheduler in clear"
    # what comes back is the site's output, in clear (the app wrote its secret there itself)
    back = [p["data"] for p in puts if p["queue"].endswith("-events")]
    assert any(secrets["site-a"] in b for b in back)


def test_doctor_checks_the_cluster_for_dask_sites(tmp_path: Path, cluster: Cluster) -> None:
    """Ready when the workers can hold the sites; not ready, saying why, when they are too
    few for ``sites_per_worker``."""
    sites = [{"name": name, "inputs": [str(path)]} for name, path in DATA.items()]

    def doctor(sites: list[dict[str, Any]]) -> tuple[int, dict[str, dict[str, Any]]]:
        config = dask_config(tmp_path, MEAN_APP, cluster.table(), sites)
        argv = cluster.fedsim("doctor", str(config), "--json")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert result.stdout.strip(), result.stderr[-3000:]
        return result.returncode, {r["site"]: r for r in json.loads(result.stdout)["sites"]}

    code, rows = doctor(sites)
    assert code == 0, rows
    assert set(rows) == set(DATA)
    for row in rows.values():
        assert row["ready"] and row["reachable"] and row["sandbox"], row
        assert row["location"] == f"dask {cluster.address} (3 workers)"
        assert row["agent"] == fedsim_version and row["python"] == platform.python_version()
        assert row["disk_free"] > 0 and abs(row["clock_offset"]) < 5

    code, rows = doctor([*sites, {"name": "site-d", "inputs": [str(DATA["site-a"])]}])
    assert code == 9
    for row in rows.values():
        assert not row["ready"]
        assert row["problems"] == [
            "4 dask sites with sites_per_worker = 1 need 4 workers; the cluster has 3"
        ]


def test_provision_installs_the_app_environment_at_every_worker_once(tmp_path: Path) -> None:
    """Workers with a cache of their own, empty: ``fedsim provision`` sends the app's
    wheelhouse to each and installs it there; a second time nothing is sent or installed."""
    cache = tmp_path / "worker-cache"
    sites = [{"name": name, "inputs": [str(path)]} for name, path in DATA.items()]
    with dask_cluster(tmp_path, 2, worker_cache=cache) as cluster:
        config = dask_config(tmp_path, MEAN_APP, {**cluster.table(), "sites_per_worker": 2}, sites)
        outputs = []
        for _ in range(2):
            done = subprocess.run(
                cluster.fedsim("provision", str(config)),
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "COLUMNS": "200"},
                check=False,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            outputs.append(done.stdout)
    assert "2 of 2 Dask workers changed" in outputs[0] and "installed" in outputs[0]
    assert "0 of 2 Dask workers changed" in outputs[1] and "installed" not in outputs[1]
    assert all(worker in outputs[1] for worker in cluster.workers)
    (env,) = (p for p in (cache / "dask-worker" / "envs").iterdir() if p.is_dir())
    python = env / "bin" / "python"
    imported = subprocess.run([str(python), "-c", "import FeatureCloud, pandas"], check=False)
    assert imported.returncode == 0, "the app's packages, installed from the shipped wheels"
