"""Federated against centralised: run the same app on one site holding the pooled data and
measure the difference, in numbers (comparison.json) and pictures (PNG), in the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.compare.generic import Skipped
from fedsim.compare.measures import MEASURES, Measure, Outputs, generic
from fedsim.compare.pooling import (
    CENTRAL_SITE,
    centralised_config,
    centralised_timeout,
    pool_inputs,
)
from fedsim.config import RunConfig
from fedsim.logs import counted, get_logger
from fedsim.rundir import CENTRAL_RUNS, COMPARISON, RunDir

log = get_logger("compare")


@dataclass(frozen=True)
class Comparison:
    run_dir: Path
    app: str
    measures: list[Measure]
    plots: list[Path]
    skipped: list[Skipped]

    @property
    def passed(self) -> bool:
        """No measure failed, and there was one: a comparison of nothing is not a pass."""
        return bool(self.measures) and all(m.passed is not False for m in self.measures)

    @property
    def problem(self) -> str | None:
        """Why the comparison did not pass, in one line; None when it passed."""
        if not self.measures:
            why = "; ".join(f"{s.file}: {s.reason}" for s in self.skipped) or "no output files"
            return f"nothing was compared: no output of the app could be lined up ({why})"
        failed = [m.name for m in self.measures if m.passed is False]
        if failed:
            return f"federated and centralised differ beyond tolerance: {', '.join(failed)}"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "measures": [m.as_dict() for m in self.measures],
            "passed": self.passed,
            "problem": self.problem,
            "skipped": [s.as_dict() for s in self.skipped],
            "plots": [p.name for p in self.plots],
        }


def compare(
    config: RunConfig, federated_run: Path, tolerances: dict[str, float] | None = None
) -> Comparison:
    """Run the centralised counterpart of ``config`` and compare it with ``federated_run``."""
    from fedsim.compare.plots import draw
    from fedsim.run import run

    federated_run = federated_run.resolve()  # comparison.json names it wherever it is read
    record = federated_run / CENTRAL_RUNS
    pooled = pool_inputs(config, record / "pooled-input")
    log.info(
        "centralised run of the same app on the pooled data of %s",
        counted(len(config.sites), "site"),
    )
    federated_duration = RunDir(federated_run).read_summary().get("duration_s")
    timeout = centralised_timeout(config, federated_duration)
    log.info("centralised run: timeout %g s, stall_timeout %g s", timeout, config.stall_timeout)
    central = run(centralised_config(config, pooled, record, timeout))
    app = config.workflow[-1].app.name
    outputs = Outputs(
        federated={s.name: federated_run / "sites" / s.name / "output" for s in config.sites},
        central=central.run_dir / "sites" / CENTRAL_SITE / "output",
        offsets=pooled.offsets,
        totals=pooled.totals,
    )
    skipped: list[Skipped] = []
    if app in MEASURES:
        measures = MEASURES[app](outputs, tolerances or {})
    else:
        measures, skipped = generic(outputs, tolerances or {})
    plots = draw(app, outputs, federated_run)
    comparison = Comparison(federated_run, app, measures, plots, skipped)
    result = {
        **comparison.as_dict(),
        "federated_run": str(federated_run),
        "centralised_run": str(central.run_dir),
    }
    (federated_run / COMPARISON).write_text(json.dumps(result, indent=2) + "\n")
    for m in measures:
        log.info("%s", describe(m))
    for item in skipped:
        log.warning("not compared: %s: %s", item.file, item.reason)
    return comparison


def describe(m: Measure) -> str:
    """``name = value (ok, upper bound 1e-08)``, and where the worst number is."""
    if not m.judged:
        return f"{m.name} = {m.value:.3g} (reported, not judged)"
    verdict = "ok" if m.passed else "FAILED"
    text = f"{m.name} = {m.value:.3g} ({verdict}, {m.bound} bound {m.limit:.3g})"
    if m.where:
        w = m.where
        text += f", worst at site {w['site']}, row {w['row']!r}, column {w['column']!r}"
    return text
