"""A finished (or failed) run directory, read back for the report.

Everything comes from the files a run leaves (DESIGN: the run directory is the unit of
record); a file that an older run, a run that never started its sites, or a run without
``--compare`` lacks is None here, and the report says so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.compare import COMPARISON
from fedsim.rundir import CONFIG, STATES, TRAFFIC, RunDir

VERSIONS = "versions.json"


@dataclass(frozen=True)
class RunRecord:
    path: Path
    summary: dict[str, Any]
    traffic: pd.DataFrame
    """traffic.csv, ``time`` as seconds since the run started; ``memo`` "" for none."""
    states: pd.DataFrame | None
    """states.csv, ``time`` as seconds since the run started; None when not recorded."""
    comparison: dict[str, Any] | None
    plots: dict[str, bytes]
    """The comparison's PNG plots by file name (those that exist)."""
    config_text: str | None
    versions: dict[str, Any] | None

    @property
    def start(self) -> float:
        return epoch(self.summary["started"])

    @property
    def duration(self) -> float:
        """Seconds from start to end; for a run still going (or killed), to its last
        recorded moment."""
        if self.summary.get("ended"):
            return epoch(self.summary["ended"]) - self.start
        times = [0.0, *self.traffic["time"]]
        if self.states is not None:
            times += list(self.states["time"])
        return max(times)

    @property
    def sites(self) -> list[str]:
        return list(self.summary["sites"])


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _relative(frame: pd.DataFrame, start: float) -> pd.DataFrame:
    frame = frame.copy()
    frame["time"] = [epoch(t) - start for t in frame["time"]]
    return frame


def _csv(path: Path, start: float) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    # every column as text: a memo or an app state of "1" or "NA" is a name, not a number
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return _relative(frame, start)


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_run(run_dir: RunDir) -> RunRecord:
    path = run_dir.path
    summary = run_dir.read_summary()
    start = epoch(summary["started"])
    traffic = _csv(path / TRAFFIC, start)
    if traffic is None:
        traffic = pd.DataFrame(columns=["time", "sender", "receiver", "memo", "bytes", "step"])
    traffic["bytes"] = traffic["bytes"].astype(int)
    states = _csv(path / STATES, start)
    if states is not None:
        states["progress"] = pd.to_numeric(states["progress"])
    comparison = _json(path / COMPARISON)
    plots = {
        name: (path / name).read_bytes()
        for name in (comparison or {}).get("plots", [])
        if (path / name).is_file()
    }
    config = path / CONFIG
    config_text = config.read_text(encoding="utf-8") if config.is_file() else None
    return RunRecord(
        path=path,
        summary=summary,
        traffic=traffic,
        states=states,
        comparison=comparison,
        plots=plots,
        config_text=config_text,
        versions=_json(path / VERSIONS),
    )
