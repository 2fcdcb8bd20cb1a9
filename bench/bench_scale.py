"""How a run grows with its number of sites: wall time and the whole process tree's memory.

For each N: N local sites of the mean app (1000 x 10 rows per site, waits shortened), timed
from `fedsim run` to its exit, with the tree's resident (RSS) and proportional (PSS) memory
sampled every half second (fedsim, relay, sandboxes, agents, apps: everything below the
run's process); against the floor of N bare `python -c 'import numpy'` in the app's
environment, two at a time (this machine's cores). Reported per N and as the cost of each
added site (slope between the two largest N).

Run: .venv/bin/python bench/bench_scale.py [--sites 3 10 50 100]
Writes bench/results/scale.json. Only loopback traffic; the app environment must be cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tomli_w

from fedsim.appenv import ensure_app_env, env_python

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "mean"
ROWS, COLUMNS = 1000, 10


def write_run(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(n)
    sites = []
    for i in range(n):
        data = folder / "data" / f"s{i}"
        data.mkdir(parents=True)
        values = rng.normal(size=(ROWS, COLUMNS))
        header = ",".join(f"x{j}" for j in range(COLUMNS))
        np.savetxt(data / "data.csv", values, delimiter=",", header=header, comments="")
        sites.append({"name": f"s{i}", "inputs": [str(data)], "coordinator": i == 0})
    config = {
        "app": str(APP),
        "output_dir": str(folder / "runs"),
        "timeout": 1800,
        "stall_timeout": 600,
        "shorten_waits": True,
        "sites": sites,
    }
    path = folder / "fedsim.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_memory(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over ``pids``, from smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def measure(argv: list[str], also: Sequence[int] = ()) -> dict[str, float]:
    """Wall seconds and peak tree memory of one command, with the trees of the processes
    ``also`` (where its sites live when they are not its children: a cluster's workers)."""
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = tree_memory([p for root in (process.pid, *also) for p in process_tree(root)])
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "rss_gib": peak[0] / 2**30, "pss_gib": peak[1] / 2**30}


def floor(python: Path, n: int) -> float:
    """N bare interpreters importing numpy, two at a time: what starting N Pythons costs."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: subprocess.run([str(python), "-c", "import numpy"], check=True),
                      range(n)))  # fmt: skip
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50, 100])
    args = parser.parse_args()
    python = env_python(ensure_app_env(APP))
    rows = []
    for n in args.sites:
        with tempfile.TemporaryDirectory(prefix="fedsim-scale-") as tmp:
            config = write_run(Path(tmp), n)
            run = measure([sys.executable, "-m", "fedsim", "run", str(config)])
        bare = floor(python, n)
        row = {"sites": n, **run, "floor_s": round(bare, 2),
               "wall_over_floor": round(run["wall_s"] / bare, 2)}  # fmt: skip
        rows.append(row)
        print(
            f"{n:>4} sites: {row['wall_s']:7.1f} s, RSS {row['rss_gib']:.2f} GiB, "
            f"PSS {row['pss_gib']:.2f} GiB, floor {bare:.1f} s ({row['wall_over_floor']}x)",
            flush=True,
        )
    if len(rows) > 1:
        a, b = rows[-2], rows[-1]
        added = b["sites"] - a["sites"]
        per_site = {
            "seconds": round((b["wall_s"] - a["wall_s"]) / added, 3),
            "pss_mib": round((b["pss_gib"] - a["pss_gib"]) * 1024 / added, 1),
        }
        print(f"each added site: {per_site['seconds']} s, {per_site['pss_mib']} MiB PSS")
    else:
        per_site = {}
    out = ROOT / "bench" / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "per_added_site": per_site}, indent=2) + "\n")


if __name__ == "__main__":
    main()
