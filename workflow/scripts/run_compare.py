"""Run ``fedsim compare`` on one split and record what the summary needs, also when a
measure fails.

    python run_compare.py --fedsim FEDSIM --config SPLIT/fedsim.toml --runs RUNS \\
        --record RUNS/record.json --log compare.log --app APP --strategy S --sites N

``fedsim compare`` writes its run directory under the config's ``output_dir`` (RUNS) and
prints it last. Exit code 0 (every measure within its tolerance) and 7 (a measure beyond
it) both leave a complete comparison: the record notes the code and this script succeeds,
so the workflow goes on and the summary shows ``passed=False``. Any other code (the run
itself failed) is passed on. Earlier runs of the same cell under RUNS are removed first,
so RUNS holds exactly the run the record describes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

COMPARISON_FAILED = 7  # fedsim's exit code: both runs finished, a measure is beyond tolerance
SUMMARY = "summary.json"


def run_summary(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / SUMMARY).read_text())
    keys = ("status", "started", "ended", "duration_s", "bytes", "messages")
    return {key: summary.get(key) for key in keys}


def remove_earlier_runs(runs: Path) -> None:
    if not runs.is_dir():
        return
    for child in runs.iterdir():
        if child.is_dir() and (child / SUMMARY).is_file():
            shutil.rmtree(child)


def run_compare(fedsim: str, config: Path, log: Path) -> tuple[int, Path | None]:
    """``fedsim compare CONFIG``: its exit code and the run directory it printed last."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        result = subprocess.run(
            [fedsim, "compare", str(config)], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    with log.open("a") as out:
        out.write(f"\n--- stdout (exit code {result.returncode}) ---\n{result.stdout}")
    lines = result.stdout.strip().splitlines()
    return result.returncode, Path(lines[-1]) if lines else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fedsim", default="fedsim", help="the fedsim command")
    parser.add_argument("--config", type=Path, required=True, help="the split's fedsim.toml")
    parser.add_argument("--runs", type=Path, required=True, help="the config's output_dir")
    parser.add_argument("--record", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--log", type=Path, required=True, help="fedsim's output goes here")
    parser.add_argument("--app", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--sites", type=int, required=True)
    args = parser.parse_args(argv)

    remove_earlier_runs(args.runs)
    code, run_dir = run_compare(args.fedsim, args.config, args.log)
    if code not in (0, COMPARISON_FAILED) or run_dir is None:
        tail = args.log.read_text().splitlines()[-20:]
        print(f"fedsim compare {args.config} failed with exit code {code}:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
        return code or 1
    comparison = json.loads((run_dir / "comparison.json").read_text())
    record = {
        "app": args.app,
        "strategy": args.strategy,
        "sites": args.sites,
        "exit_code": code,
        "passed": comparison["passed"],
        "run_dir": str(run_dir),
        "measures": comparison["measures"],
        "plots": [str(run_dir / plot) for plot in comparison["plots"]],
        "federated": run_summary(run_dir),
        "centralised": run_summary(Path(comparison["centralised_run"])),
    }
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
