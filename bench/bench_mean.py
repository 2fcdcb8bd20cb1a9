"""Benchmark the three-site mean example against a floor measured in the same run.

Why ratios and not timed unit tests: absolute seconds depend on the machine, its load and its
disk cache, so a test asserting "under N seconds" is either flaky or so loose it catches nothing.
Instead this script measures, in one run on one machine, what fedsim costs (wall time of
``fedsim run`` on examples/mean with the engine's sleeps shortened and real) and the floor
nobody can beat (three bare processes of the app env's python importing the FeatureCloud
engine, started together), and reports the ratios. Memory is compared the same way: the app's
peak RSS inside a site against the peak RSS of the bare import.

Run: .venv/bin/python bench/bench_mean.py [--repeat N] [--repeat-real N]
Writes bench/results/mean.json. Only loopback traffic (the app env must already be cached).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.appenv import ensure_app_env, env_python
from fedsim.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mean" / "fedsim.toml"
RESULTS = ROOT / "bench" / "results" / "mean.json"
N_SITES = 3
FLOOR_CODE = (
    "import resource, FeatureCloud.app.engine.app; "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"  # KiB on Linux
)


def write_config(example: Path, out_dir: Path, shorten: bool) -> Path:
    """Copy the example config with absolute paths, output in out_dir and the switch set."""
    config = load_config(example).public_dict()  # paths come back resolved
    config.update(shorten_waits=shorten, output_dir=str(out_dir / "runs"))
    path = out_dir / f"fedsim-{'short' if shorten else 'real'}.toml"
    path.write_text(tomli_w.dumps(_without_none(config)), encoding="utf-8")
    return path


def _without_none(value: Any) -> Any:
    """TOML has no null: a key left out means the default."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def site_span(summary: dict[str, Any]) -> float:
    """Seconds from the first site starting to the last site ending."""
    sites = summary["sites"].values()
    start = min(datetime.fromisoformat(s["started"]) for s in sites)
    end = max(datetime.fromisoformat(s["ended"]) for s in sites)
    return (end - start).total_seconds()


def run_fedsim(config: Path) -> tuple[float, dict[str, Any]]:
    """Run ``fedsim run`` once; return its wall time and the run's summary.json."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"fedsim run {config} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if summary["status"] != "finished":
        sys.exit(f"run {run_dir} ended {summary['status']}: {summary.get('error')}")
    return wall, summary


def bench_fedsim(config: Path, repeat: int) -> dict[str, Any]:
    walls: list[float] = []
    summaries: list[dict[str, Any]] = []
    for _ in range(repeat):
        wall, summary = run_fedsim(config)
        walls.append(wall)
        summaries.append(summary)
    durations = [s["duration_s"] for s in summaries]
    spans = [site_span(s) for s in summaries]
    return {
        "wall_s": walls,
        "duration_s": durations,
        "site_span_s": spans,
        "median_wall_s": statistics.median(walls),
        "median_duration_s": statistics.median(durations),
        "median_site_span_s": statistics.median(spans),
        "summaries": summaries,
    }


def bench_floor(python: Path, repeat: int) -> dict[str, Any]:
    """Start N_SITES bare importers together; time until all exited; collect their peak RSS."""
    walls: list[float] = []
    rss: list[int] = []
    for i in range(repeat + 1):  # the first round only warms the page cache
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [str(python), "-c", FLOOR_CODE],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(N_SITES)
        ]
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - t0
        if any(p.returncode != 0 for p in procs):
            sys.exit(f"{python} could not import FeatureCloud.app.engine.app")
        if i:
            walls.append(wall)
            rss += [int(out.strip()) for out in outs]
    return {
        "wall_s": walls,
        "median_wall_s": statistics.median(walls),
        "peak_rss_bytes": max(rss),
        "rss_bytes": rss,
    }


def peak_memory(summaries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per site, the highest app and agent peak RSS over all runs."""
    out: dict[str, dict[str, int]] = {}
    for summary in summaries:
        for name, site in summary["sites"].items():
            mem = out.setdefault(name, {"app_peak_rss_bytes": 0, "agent_peak_rss_bytes": 0})
            for key in mem:
                mem[key] = max(mem[key], site["memory"][key])
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs with shorten_waits = true, and floor rounds (default 3)",
    )
    parser.add_argument(
        "--repeat-real",
        type=int,
        default=1,
        help="runs with shorten_waits = false, ~15 s each (default 1; 0 skips)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    if args.repeat < 1 or args.repeat_real < 0:
        parser.error("--repeat must be >= 1 and --repeat-real >= 0")

    python = env_python(ensure_app_env(load_config(EXAMPLE).app))
    floor = bench_floor(python, args.repeat)
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as tmp:
        short = bench_fedsim(write_config(EXAMPLE, Path(tmp), True), args.repeat)
        real = (
            bench_fedsim(write_config(EXAMPLE, Path(tmp), False), args.repeat_real)
            if args.repeat_real
            else None
        )
    memory = peak_memory(short["summaries"] + (real["summaries"] if real else []))
    app_peak = max(m["app_peak_rss_bytes"] for m in memory.values())
    ratios = {
        "wall_shortened_over_floor": short["median_wall_s"] / floor["median_wall_s"],
        "wall_real_over_floor": real["median_wall_s"] / floor["median_wall_s"] if real else None,
        "app_peak_rss_over_floor_rss": app_peak / floor["peak_rss_bytes"],
    }

    rows = [
        ("floor: 3 bare imports", floor, args.repeat),
        ("fedsim, shorten_waits = true", short, args.repeat),
    ]
    if real:
        rows.append(("fedsim, shorten_waits = false", real, args.repeat_real))
    print(f"{'':32}{'runs':>5}{'median wall':>13}{'duration_s':>12}{'site span':>11}")
    for label, res, n in rows:
        dur = f"{res['median_duration_s']:.2f}" if "median_duration_s" in res else "-"
        span = f"{res['median_site_span_s']:.2f}" if "median_site_span_s" in res else "-"
        print(f"{label:32}{n:>5}{res['median_wall_s']:>12.2f}s{dur:>12}{span:>11}")
    print(f"\n{'site':10}{'app peak RSS':>16}{'agent peak RSS':>16}")
    for name, mem in memory.items():
        print(
            f"{name:10}{mib(mem['app_peak_rss_bytes']):>16}{mib(mem['agent_peak_rss_bytes']):>16}"
        )
    print(f"{'floor':10}{mib(floor['peak_rss_bytes']):>16}")
    print("\nratios:")
    for key, value in ratios.items():
        print(f"  {key:30} {'-' if value is None else f'{value:.2f}'}")

    for res in (short, real):
        if res:
            del res["summaries"]
    result = {
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "floor": floor,
        "shortened": short,
        "real": real,
        "memory": memory,
        "ratios": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
