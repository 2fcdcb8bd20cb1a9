"""Federated against centralised: run the same app on one site holding the pooled data and
measure the difference, in numbers (comparison.json) and pictures (PNG), in the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.compare.measures import MEASURES, Measure, Outputs, generic
from fedsim.compare.pooling import CENTRAL_SITE, centralised_config, pool_inputs
from fedsim.config import RunConfig
from fedsim.logs import counted, get_logger

log = get_logger("compare")
COMPARISON = "comparison.json"


@dataclass(frozen=True)
class Comparison:
    run_dir: Path
    app: str
    measures: list[Measure]
    plots: list[Path]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.measures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "measures": [m.as_dict() for m in self.measures],
            "passed": self.passed,
            "plots": [p.name for p in self.plots],
        }


def compare(
    config: RunConfig, federated_run: Path, tolerances: dict[str, float] | None = None
) -> Comparison:
    """Run the centralised counterpart of ``config`` and compare it with ``federated_run``."""
    from fedsim.compare.plots import draw
    from fedsim.run import run

    record = federated_run / "centralised"
    pooled = pool_inputs(config, record / "pooled-input")
    log.info(
        "centralised run of the same app on the pooled data of %s",
        counted(len(config.sites), "site"),
    )
    central = run(centralised_config(config, pooled, record))
    app = config.workflow[-1].app.name
    outputs = Outputs(
        federated={s.name: federated_run / "sites" / s.name / "output" for s in config.sites},
        central=central.run_dir / "sites" / CENTRAL_SITE / "output",
        offsets=pooled.offsets,
    )
    measures = MEASURES.get(app, generic)(outputs, tolerances or {})
    plots = draw(app, outputs, federated_run)
    comparison = Comparison(federated_run, app, measures, plots)
    result = {
        **comparison.as_dict(),
        "federated_run": str(federated_run),
        "centralised_run": str(central.run_dir),
    }
    (federated_run / COMPARISON).write_text(json.dumps(result, indent=2) + "\n")
    for m in measures:
        verdict = "reported" if m.tolerance is None else ("ok" if m.passed else "FAILED")
        log.info(
            "%s = %.3g (%s%s)",
            m.name,
            m.value,
            verdict,
            "" if m.tolerance is None else f", tolerance {m.tolerance:g}",
        )
    return comparison
