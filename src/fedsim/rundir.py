"""The run directory, the unit of record: written by a run, read by status, logs and compare.

runs/<run-id>/
    config.toml          the resolved config (no secrets: the TOML holds none)
    fedsim.log           one merged log: orchestrator, relay, agents, apps
    traffic.csv          one row per message: time, sender, receiver, memo, bytes
    states.csv           one row per change of a site's status or app state
    report.html          written by fedsim report: the run as one HTML page
    summary.json         status, times, per-site status and traffic
    sites/<name>/output/       what the site's app wrote to /mnt/output
    sites/<name>/results.zip   the same, zipped, as FeatureCloud hands it out
    sites/<name>/site.log      that site's agent and app lines
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.progress import StateChange
from fedsim.relay.state import TrafficRecord
from fedsim.safefiles import Skipped, zip_tree

SUMMARY = "summary.json"
NO_MEMO = "None"
"""What the newer FeatureCloud engine sends for a message without a memo (``str(None)``)."""
LOG = "fedsim.log"
TRAFFIC = "traffic.csv"
CONFIG = "config.toml"
COMPARISON = "comparison.json"
CENTRAL_RUNS = "centralised"
"""``fedsim compare`` keeps the centralised run inside the federated run's directory."""
TRAFFIC_COLUMNS = (
    "time",
    "sender",
    "receiver",
    "memo",
    "bytes",
    "kind",
    "step",
    "delivered",
    "read",
    "handed_out",
    "fault",
)
"""``time``: sent; ``delivered``: in the receiver's mailbox; ``read``: its agent acknowledged
it (it reached the app); ``handed_out``: how often the relay gave it to that agent (more than
once when an answer was lost); ``fault``: ``dropped`` for a message an injected fault
dropped."""
STATES = "states.csv"
STATES_COLUMNS = ("time", "step", "site", "status", "state", "message", "progress")


def new_run_id(name: str | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    label = f"-{name}" if name else ""
    return f"{stamp}{label}-{secrets.token_hex(2)}"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + (
        f".{int(timestamp % 1 * 1000):03d}Z"
    )


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, output_dir: Path, run_id: str) -> RunDir:
        path = output_dir / run_id
        (path / "sites").mkdir(parents=True)
        return cls(path)

    def site_dir(self, site: str) -> Path:
        return self.path / "sites" / site

    def step_site_dir(self, site: str, step_label: str) -> Path:
        """A single app works in ``sites/<name>``; a workflow's step k in
        ``sites/<name>/steps/<k>-<app>``, and its last step's output is copied up."""
        return self.site_dir(site) / "steps" / step_label if step_label else self.site_dir(site)

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / CONFIG).write_text(tomli_w.dumps(config), encoding="utf-8")

    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.path / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / SUMMARY)  # readers never see half a summary

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self.path / SUMMARY).read_text(encoding="utf-8"))

    def write_traffic(self, steps: Iterable[tuple[int, Iterable[TrafficRecord]]]) -> None:
        """One row per message of every step (a single app is step 1).

        A message without a memo has an empty memo field whatever the engine: the newer
        FeatureCloud engine sends ``str(memo)``, so its "no memo" arrives as the text
        ``None`` (and is delivered as such, which its receiver expects), while older
        engines send null. Written as it came, the same app would show two different memos
        depending on the engine version.
        """
        with open(self.path / TRAFFIC, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(TRAFFIC_COLUMNS)
            for step, records in steps:
                for r in records:
                    memo = "" if r.memo in (None, NO_MEMO) else r.memo
                    sent, delivered, read = iso(r.time), iso(r.delivered), iso(r.read)
                    row = [sent, r.sender, r.receiver, memo, r.bytes, r.kind, step, delivered, read]
                    writer.writerow([*row, r.handed_out, r.fault or ""])

    def write_states(self, changes: Iterable[StateChange]) -> None:
        """The timeline of every site's status and app state (``fedsim report`` draws it)."""
        with open(self.path / STATES, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(STATES_COLUMNS)
            for c in sorted(changes, key=lambda c: c.time):
                progress = "" if c.progress is None else c.progress
                state, message = c.state or "", c.message or ""
                writer.writerow([iso(c.time), c.step, c.site, c.status, state, message, progress])

    def zip_output(self, site: str, limit: int | None = None) -> list[Skipped]:
        """``sites/<name>/results.zip`` from the site's output: regular files only, never
        through a link (the app wrote that folder), complete or not there at all."""
        site_dir = self.site_dir(site)
        return zip_tree(site_dir / "output", site_dir / "results.zip", limit=limit)


def directory_digest(path: Path) -> str:
    """A hash of every file's relative path and content: which version of an app ran."""
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def find_run(run: str | None, output_dir: Path = Path("runs")) -> RunDir:
    """A run by path, by id under ``output_dir``, or the newest there when none is named."""
    if run is not None:
        candidate = Path(run)
        if (candidate / SUMMARY).is_file():
            return RunDir(candidate)
        if (output_dir / run / SUMMARY).is_file():
            return RunDir(output_dir / run)
        raise FileNotFoundError(f"no run {run!r} (looked for {candidate} and {output_dir / run})")
    runs = [p for p in output_dir.glob("*") if (p / SUMMARY).is_file()]
    if not runs:
        raise FileNotFoundError(f"no runs under {output_dir}/")
    # config.toml is written once, when the run starts: its time orders runs by start
    return RunDir(max(runs, key=lambda p: (p / CONFIG).stat().st_mtime))
