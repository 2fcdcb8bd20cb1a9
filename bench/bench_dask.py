"""50 sites on two Dask workers (``sites_per_worker = 25``) against the same run on local sites.

What a Dask site costs over a local one (the task, its queues through the scheduler, the
site host at the worker, the relay's TLS over TCP), as ratios of the two runs taken in one
session, alternately when repeated, so load and caches weigh on both alike. The run is
``bench_scale.py``'s: the mean app on 1000 x 10 rows per site, waits shortened, each run's
first and last site checked against the pooled mean before its figures count. Memory is
the peak PSS of everything the run holds: fedsim's process tree, and for the Dask run also
the workers' trees (where its sites live) less what the idle cluster held before it;
per site is that divided by the number of sites.

The cluster is the tests' (``tests/dask_cluster.py``): a real ``dask scheduler`` on the hub
of network namespaces of this script's own and ``dask worker`` processes each in a namespace
of its own; fedsim runs from the hub, the relay listens there. The workers share this
machine's files.

Run as root: .venv/bin/python bench/bench_dask.py [--sites 50] [--workers 2] [--repeat 1]
Writes bench/results/dask.json. Only the script's own namespaces are used.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_scale import (  # noqa: E402
    check,
    fedsim_mean,
    measure,
    pooled_mean,
    process_tree,
    run_dir,
    tree_memory,
    write_run,
)
from fedsim.appenv import ensure_app_env  # noqa: E402
from fedsim.sites.wheelhouse import app_wheelhouse  # noqa: E402
from tests.dask_cluster import Cluster, dask_cluster  # noqa: E402

APP = ROOT / "apps" / "mean"


def dask_run(local: Path, cluster: Cluster, per_worker: int) -> Path:
    """The same run with every site on the cluster."""
    config = tomllib.loads(local.read_text())
    for site in config["sites"]:
        site["location"] = "dask"
    config["dask"] = {**cluster.table(), "sites_per_worker": per_worker}
    path = local.with_name("dask.toml")
    path.write_text(tomli_w.dumps(config))
    return path


def checked(kind: str, printed: str, n: int, expected: np.ndarray) -> None:
    """A run's figures count only if its first and last sites got the pooled mean."""
    for site in ("s0", f"s{n - 1}"):
        check(f"{kind} sites at {site}", fedsim_mean(run_dir(printed), site), expected)


def cluster_pids(cluster: Cluster) -> list[int]:
    return [cluster.scheduler.pid, *(p.pid for p in cluster.workers.values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    app_wheelhouse(ensure_app_env(APP))  # built here: the hub fedsim runs from has no network
    per_worker = math.ceil(args.sites / args.workers)
    runs: dict[str, list[dict[str, float]]] = {"local": [], "dask": []}
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-dask-") as tmp:
        folder = Path(tmp)
        local = write_run(folder, args.sites)
        expected = pooled_mean(folder, args.sites)
        (folder / "cluster").mkdir()
        with dask_cluster(folder / "cluster", args.workers) as cluster:
            remote = dask_run(local, cluster, per_worker)
            idle_rss, idle_pss = tree_memory(
                [p for root in cluster_pids(cluster) for p in process_tree(root)]
            )
            for _ in range(args.repeat):
                run, printed = measure(cluster.fedsim("run", str(local)))
                checked("local", printed, args.sites, expected)
                runs["local"].append(run)
                argv = cluster.fedsim("run", str(remote))
                run, printed = measure(argv, also=cluster_pids(cluster))
                checked("dask", printed, args.sites, expected)
                run["rss_gib"] -= idle_rss / 2**30
                run["pss_gib"] -= idle_pss / 2**30
                runs["dask"].append(run)
                print(f"local {runs['local'][-1]}\ndask  {run}", flush=True)
    median = {
        kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for kind, rows in runs.items()
    }
    per_site = {
        kind: {
            "wall_s": round(m["wall_s"] / args.sites, 3),
            "pss_mib": round(m["pss_gib"] * 1024 / args.sites, 1),
        }
        for kind, m in median.items()
    }
    result = {
        "sites": args.sites,
        "workers": args.workers,
        "sites_per_worker": per_worker,
        "idle_cluster_pss_mib": round(idle_pss / 2**20, 1),
        "runs": {
            k: [{key: round(v, 3) for key, v in r.items()} for r in rows]
            for k, rows in runs.items()
        },
        "per_site": per_site,
        "dask_over_local": {
            "wall": round(median["dask"]["wall_s"] / median["local"]["wall_s"], 2),
            "pss": round(median["dask"]["pss_gib"] / median["local"]["pss_gib"], 2),
        },
    }
    out = ROOT / "bench" / "results" / "dask.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
