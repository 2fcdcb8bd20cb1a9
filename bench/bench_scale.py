"""How a run grows with its number of sites: wall time and the whole process tree's memory.

For each N: N local sites of the mean app (1000 x 10 rows per site, waits shortened), their
apps forked from the fork-server and (for comparison) each started as a fresh interpreter, timed
from `fedsim run` to its exit (the median of ``--repeat`` runs), and the tree's resident (RSS)
and proportional (PSS) memory sampled every half second in one more run (fedsim, relay,
sandboxes, agents, apps: everything below the run's process); against the floor of N bare
`python -c 'import numpy'` in the app's environment, two at a time (this machine's cores),
and, when a Python with ``flwr[simulation]`` is at hand (the ``bench`` extra, or
``--flower-python``), Flower's simulation of the same job on the same files, measured the same
way. Time and memory come from separate runs: reading a process's smaps costs about 1 ms of
CPU, a quarter of a second for the 300 processes of 100 sites, and sampling that every half
second would be timed as fedsim's own work. Every result is checked against the pooled mean
before a figure is kept. Reported per N and as the cost of each added site (slope between the
two largest N).

Run: .venv/bin/python bench/bench_scale.py [--sites 3 10 50 100 200 500] [--repeat 3]
     [--flower-python P] [--user]
``--user`` (as root) also runs the forked start-up as an ordinary user (key ``user``).
Writes bench/results/scale.json. Only loopback traffic; the app environment must be cached.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedsim.appenv import ensure_app_env, env_python

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "mean"
FLOWER = Path(__file__).resolve().parent / "flower_mean.py"
ROWS, COLUMNS = 1000, 10
TOLERANCE = 1e-9
"""Relative difference allowed between a federated mean and the pooled one."""
MIN_AVAILABLE = 1.5 * 2**30
"""A run is ended (SIGTERM, so that fedsim still writes its record) when the machine's
available memory falls below this: a benchmark must not push the machine into the OOM killer."""


def available_memory() -> int:
    """``MemAvailable`` of /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


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


def measure(
    argv: list[str],
    also: Sequence[int] = (),
    env: dict[str, str] | None = None,
    *,
    memory: bool = True,
) -> tuple[dict[str, float], str]:
    """Wall seconds and peak tree memory of one command, and what it printed; with the
    trees of the processes ``also`` (where its sites live when they are not its children:
    a cluster's workers). Without ``memory``, only the machine's available memory is watched
    (its figures then have no RSS or PSS), so that the wall time is the command's alone."""
    load = os.getloadavg()[0]  # other work on the machine: figures are compared within a run
    start = time.monotonic()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = [0, 0]
    done = threading.Event()
    short_of_memory: list[int] = []

    def sample() -> None:
        while not done.is_set():
            if memory:
                pids = [p for root in (process.pid, *also) for p in process_tree(root)]
                rss, pss = tree_memory(pids)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            available = available_memory()
            if available < MIN_AVAILABLE and not short_of_memory:
                short_of_memory.append(available)
                process.terminate()
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    if short_of_memory:
        raise SystemExit(
            f"{argv} ended after {wall:.0f} s: the machine had {short_of_memory[0] / 2**30:.2f}"
            f" GiB available (peak tree PSS {peak[1] / 2**30:.2f} GiB,"
            f" RSS {peak[0] / 2**30:.2f} GiB)"
        )
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{stderr[-3000:]}")
    figures = {"wall_s": round(wall, 2), "load_before": load}
    if memory:
        figures.update(rss_gib=peak[0] / 2**30, pss_gib=peak[1] / 2**30)
    return figures, stdout


def timed_and_sampled(run: Callable[[bool], dict[str, float]], repeat: int) -> dict[str, Any]:
    """``run(memory)`` ``repeat`` times unwatched, for the median wall time (runs of hundreds
    of sites vary by a tenth from one to the next), and once sampled, for the memory."""
    timed = [run(False) for _ in range(repeat)]
    sampled = run(True)
    walls = [figures["wall_s"] for figures in timed]
    return {
        **sampled,
        "wall_s": round(statistics.median(walls), 2),
        "walls_s": walls,
        "sampled_wall_s": sampled["wall_s"],
        "load_before": timed[0]["load_before"],
    }


def pooled_mean(folder: Path, n: int) -> np.ndarray:
    files = [folder / "data" / f"s{i}" / "data.csv" for i in range(n)]
    return np.vstack([np.loadtxt(file, delimiter=",", skiprows=1) for file in files]).mean(axis=0)


def check(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    """A figure counts only if the job computed the right thing."""
    if not np.allclose(got, expected, rtol=TOLERANCE, atol=0):
        raise SystemExit(f"{name} computed {got}, not the pooled mean {expected}")


def run_dir(printed: str) -> Path:
    """What ``fedsim run`` prints last: its run directory."""
    return Path(printed.strip().splitlines()[-1])


def fedsim_mean(run: Path, site: str) -> np.ndarray:
    """The means one site wrote (``column,mean`` rows) in the run directory ``run``."""
    with open(run / "sites" / site / "output" / "means.csv") as handle:
        return np.array([float(row["mean"]) for row in csv.DictReader(handle)])


def flower_python(given: str | None) -> str | None:
    """The Python to run Flower with: the one given, or this one when it has Flower."""
    if given:
        return given
    return sys.executable if importlib.util.find_spec("flwr") else None


def floor(python: Path, n: int) -> float:
    """N bare interpreters importing numpy, two at a time: what starting N Pythons costs."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: subprocess.run([str(python), "-c", "import numpy"], check=True),
                      range(n)))  # fmt: skip
    return time.monotonic() - start


def fedsim_run(
    folder: Path,
    config: Path,
    start: str,
    expected: np.ndarray,
    memory: bool,
    *,
    as_user: tuple[list[str], dict[str, str]] = ([], {}),
) -> dict[str, float]:
    """One measured ``fedsim run`` with its sites started the way ``start`` says; ``as_user``
    (a command prefix and environment) runs it as someone else."""
    prefix, extra = as_user
    env = {**os.environ, **extra, "FEDSIM_SITE_START": start}
    argv = [*prefix, sys.executable, "-m", "fedsim", "run", str(config)]
    figures, printed = measure(argv, env=env, memory=memory)
    n = len(list((folder / "data").iterdir()))
    for site in ("s0", f"s{n - 1}"):
        check(f"fedsim ({start}) at {site}", fedsim_mean(run_dir(printed), site), expected)
    return figures


def ordinary_user(folder: Path, app_env: Path) -> tuple[list[str], dict[str, str]]:
    """The prefix and environment that run fedsim as the tests' ordinary user (this session
    must be root's): ``folder`` becomes that user's."""
    sys.path.insert(0, str(ROOT))  # the tests' helper, shared rather than copied
    from tests.ordinary_user import as_ordinary_user

    return as_ordinary_user(folder, app_env)


def flower_run(python: str, folder: Path, expected: np.ndarray, memory: bool) -> dict[str, float]:
    """One measured run of Flower's simulation of the same job."""
    n = len(list((folder / "data").iterdir()))
    argv = [python, str(FLOWER), str(folder / "data"), str(n)]
    figures, printed = measure(argv, memory=memory)
    check("Flower", np.array(json.loads(printed.splitlines()[-1])["mean"]), expected)
    return figures


def cost_per_added_site(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """The slope between the two largest N measured with ``key``: what one more site costs."""
    a, b = [row for row in rows if key in row][-2:]
    added = b["sites"] - a["sites"]
    return {
        "seconds": round((b[key]["wall_s"] - a[key]["wall_s"]) / added, 3),
        "pss_mib": round((b[key]["pss_gib"] - a[key]["pss_gib"]) * 1024 / added, 1),
    }


def starts(chosen: Sequence[str], n: int, exec_max: int) -> list[str]:
    return [start for start in chosen if start != "exec" or n <= exec_max]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50, 100])
    parser.add_argument(
        "--start",
        nargs="+",
        choices=("fork", "exec"),
        default=["fork", "exec"],
        help="how sites' apps start: from the fork-server, or a fresh interpreter each "
        "(the start-up before the fork-server)",
    )
    parser.add_argument(
        "--exec-max-sites",
        type=int,
        default=200,
        help="the old start-up only up to this many sites (about 75 MiB each: 500 do not fit "
        "in 24 GiB)",
    )
    parser.add_argument(
        "--flower-python", help="a Python with flwr[simulation] (default: this one, if it has it)"
    )
    parser.add_argument(
        "--user",
        action="store_true",
        help="also run the forked start-up as an ordinary user (needs root: the tests' user)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs of each, for the median wall time (memory comes from one more run)",
    )
    args = parser.parse_args()
    app_env = ensure_app_env(APP)
    python = env_python(app_env)
    if args.user and os.geteuid() != 0:
        raise SystemExit("--user needs root (it runs fedsim as the tests' ordinary user)")
    flower = flower_python(args.flower_python)
    if flower is None:
        print("Flower is not installed here (pip install -e '.[bench]'): measuring fedsim only")
    rows: list[dict[str, Any]] = []
    for n in args.sites:
        row: dict[str, Any] = {"sites": n}
        with tempfile.TemporaryDirectory(prefix="fedsim-scale-") as tmp:
            folder = Path(tmp)
            config = write_run(folder, n)
            expected = pooled_mean(folder, n)
            for start in starts(args.start, n, args.exec_max_sites):
                row[start] = timed_and_sampled(
                    functools.partial(fedsim_run, folder, config, start, expected), args.repeat
                )
            if args.user:
                user = ordinary_user(folder, app_env)
                user_run = functools.partial(
                    fedsim_run, folder, config, "fork", expected, as_user=user
                )
                row["user"] = timed_and_sampled(user_run, args.repeat)
            if flower is not None:
                row["flower"] = timed_and_sampled(
                    functools.partial(flower_run, flower, folder, expected), args.repeat
                )
        bare = floor(python, n)
        row["floor_s"] = round(bare, 2)
        rows.append(row)
        measured = [*starts(args.start, n, args.exec_max_sites), *(["user"] if args.user else [])]
        for key in (*measured, *(["flower"] if flower else [])):
            figures = row[key]
            figures["wall_over_floor"] = round(figures["wall_s"] / bare, 2)
            print(
                f"{n:>4} sites, {key:>6}: {figures['wall_s']:7.1f} s "
                f"({figures['wall_over_floor']}x the floor of {bare:.1f} s), "
                f"RSS {figures['rss_gib']:.2f} GiB, PSS {figures['pss_gib']:.2f} GiB, "
                f"load average {figures['load_before']:.1f} before",
                flush=True,
            )
    per_site = {}
    if len(rows) > 1:
        for key in (*args.start, *(["user"] if args.user else []), *(["flower"] if flower else [])):
            if sum(key in row for row in rows) < 2:
                continue
            per_site[key] = cost_per_added_site(rows, key)
            print(
                f"each added site, {key}: {per_site[key]['seconds']} s, "
                f"{per_site[key]['pss_mib']} MiB PSS"
            )
    out = ROOT / "bench" / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "per_added_site": per_site}, indent=2) + "\n")


if __name__ == "__main__":
    main()
