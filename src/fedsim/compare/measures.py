"""App-specific measures of how far a federated result is from the centralised one.

Each measure has a value and, when it is judged, a limit, which side of it passes, and
whether it passed; reported measures are not verdicts.
The app is recognised by its directory name; an app fedsim does not know gets the generic
comparison of every output file (``fedsim.compare.generic``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedsim.compare.generic import ABS_PREFIX, REL_PREFIX, Skipped, compare_outputs

TOLERANCES: dict[str, dict[str, float]] = {
    "pca": {
        "max_principal_angle": 1e-6,
        "min_projection_correlation": 1 - 1e-6,
        "max_eigenvalue_rel_diff": 1e-8,
    },
    "linear-regression": {"max_abs_coefficient_diff": 1e-8, "r2_diff": 1e-8},
    "logistic-regression": {"max_abs_coefficient_diff": 1e-5, "accuracy_diff": 1e-9},
    "random-forest": {},
    "mean": {"max_rel_mean_diff": 1e-12},
}
"""App -> its judged measures and their default tolerances: the one list of the names that
``[compare.tolerances]`` may set, so that a misspelt name is refused by ``fedsim validate``
instead of being silently ignored. Measures that are only reported take no tolerance."""

GENERIC_TOLERANCES = (ABS_PREFIX, REL_PREFIX)
"""An app fedsim does not know is judged per output file (``fedsim.compare.generic``):
``max_abs_diff:<file>`` and ``max_rel_diff:<file>``, optionally ``:<column>``."""


def tolerance_names(app: str) -> list[str]:
    """The measures of ``app`` (its directory name) that ``[compare.tolerances]`` may set."""
    if app in TOLERANCES:
        return list(TOLERANCES[app])
    return [f"{prefix}<file>[:<column>]" for prefix in GENERIC_TOLERANCES]


def unknown_tolerance(app: str, name: str) -> str | None:
    """Why ``name`` cannot be a tolerance of ``app`` (its directory name), or None if it can."""
    if app not in TOLERANCES:
        if any(name.startswith(p) and len(name) > len(p) for p in GENERIC_TOLERANCES):
            return None
        return (
            f"no such measure: app {app!r} is not one fedsim knows, so its tolerances are "
            f"{' and '.join(tolerance_names(app))}, per output file or column"
        )
    names = tolerance_names(app)
    if name in names:
        return None
    if not names:
        return f"no such measure: app {app!r} has only reported measures, none takes a tolerance"
    return f"no such measure for app {app!r}; its measures are: {', '.join(names)}"


def _tolerance(tol: dict[str, float], app: str, name: str) -> float:
    return tol.get(name, TOLERANCES[app][name])


@dataclass(frozen=True)
class Measure:
    """One number of a comparison. A judged measure has a ``limit`` and a ``bound``: "upper"
    (the value must not exceed it: a difference) or "lower" (it must not fall below it: a
    correlation); a reported one has neither, and ``passed`` None: it is not a verdict."""

    name: str
    value: float
    limit: float | None
    bound: Literal["upper", "lower"] | None
    passed: bool | None
    where: dict[str, Any] | None = None
    """For a difference: the file, site, row and column of the worst number."""

    @property
    def judged(self) -> bool:
        return self.limit is not None

    def as_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "value": self.value,
            "judged": self.judged,
            "bound": self.bound,
            "limit": self.limit,
            "passed": self.passed,
        }
        if self.where is not None:
            data["where"] = self.where
        return data


def judged(name: str, value: float, limit: float, higher_is_better: bool = False) -> Measure:
    ok = value >= limit if higher_is_better else value <= limit
    bound: Literal["upper", "lower"] = "lower" if higher_is_better else "upper"
    return Measure(name, float(value), limit, bound, bool(ok and np.isfinite(value)))


def reported(name: str, value: float) -> Measure:
    return Measure(name, float(value), None, None, None)


@dataclass(frozen=True)
class Outputs:
    """Where the two runs' results are, and how site rows map to centralised rows."""

    federated: dict[str, Path]
    """site -> its output folder, in the config's site order"""
    central: Path
    offsets: dict[str, dict[str, int]]
    totals: dict[str, int]
    """pooled CSV -> its rows (see ``fedsim.compare.pooling.PooledInputs``)"""

    @property
    def coordinator(self) -> Path:
        return next(iter(self.federated.values()))

    def stacked(self, filename: str, rows_from: str) -> pd.DataFrame:
        """Every site's ``filename`` with its ``row`` mapped to the pooled row of ``rows_from``."""
        parts = []
        for site, folder in self.federated.items():
            frame = pd.read_csv(folder / filename)
            frame["row"] = frame["row"] + self.offsets[rows_from][site]
            parts.append(frame)
        return pd.concat(parts).set_index("row").sort_index()


def coefficient_pair(outputs: Outputs) -> tuple[pd.Series, pd.Series]:
    fed = pd.read_csv(outputs.coordinator / "coefficients.csv").set_index("term")["coefficient"]
    central = pd.read_csv(outputs.central / "coefficients.csv").set_index("term")["coefficient"]
    return fed, central.reindex(fed.index)


def _metric(folder: Path, key: str) -> float:
    return float(json.loads((folder / "metrics.json").read_text())[key])


def pca(outputs: Outputs, tol: dict[str, float]) -> list[Measure]:
    from scipy.linalg import subspace_angles

    fed = pd.read_csv(outputs.coordinator / "loadings.csv").set_index("feature")
    central = pd.read_csv(outputs.central / "loadings.csv").set_index("feature").loc[fed.index]
    angle = float(np.max(subspace_angles(fed.to_numpy(), central.to_numpy())))
    fed_proj = outputs.stacked("projections.csv", "data.csv")
    central_proj = pd.read_csv(outputs.central / "projections.csv").set_index("row")
    central_proj = central_proj.loc[fed_proj.index]
    correlations = [abs(np.corrcoef(fed_proj[c], central_proj[c])[0, 1]) for c in fed_proj.columns]
    fed_ev = pd.read_csv(outputs.coordinator / "eigenvalues.csv")["eigenvalue"].to_numpy()
    central_ev = pd.read_csv(outputs.central / "eigenvalues.csv")["eigenvalue"].to_numpy()
    return [
        judged("max_principal_angle", angle, _tolerance(tol, "pca", "max_principal_angle")),
        judged(
            "min_projection_correlation",
            float(min(correlations)),
            _tolerance(tol, "pca", "min_projection_correlation"),
            higher_is_better=True,
        ),
        judged(
            "max_eigenvalue_rel_diff",
            float(np.max(np.abs(fed_ev - central_ev) / np.abs(central_ev))),
            _tolerance(tol, "pca", "max_eigenvalue_rel_diff"),
        ),
    ]


def linear_regression(outputs: Outputs, tol: dict[str, float]) -> list[Measure]:
    fed, central = coefficient_pair(outputs)
    r2 = abs(_metric(outputs.coordinator, "r2") - _metric(outputs.central, "r2"))
    return [
        judged(
            "max_abs_coefficient_diff",
            float(np.max(np.abs(fed - central))),
            _tolerance(tol, "linear-regression", "max_abs_coefficient_diff"),
        ),
        judged("r2_diff", r2, _tolerance(tol, "linear-regression", "r2_diff")),
    ]


def prediction_pair(outputs: Outputs, app: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both runs' predictions.csv on the same pooled rows: the forest predicts test rows
    when the sites hold a test.csv (``fedsim split --test-fraction``), else training rows."""
    test = app == "random-forest" and "test.csv" in outputs.offsets
    fed = outputs.stacked("predictions.csv", "test.csv" if test else "data.csv")
    central = pd.read_csv(outputs.central / "predictions.csv").set_index("row").loc[fed.index]
    return fed, central


def logistic_regression(outputs: Outputs, tol: dict[str, float]) -> list[Measure]:
    fed, central = coefficient_pair(outputs)
    fed_pred, central_pred = prediction_pair(outputs, "logistic-regression")
    fed_acc = float((fed_pred["predicted"] == fed_pred["y"]).mean())
    central_acc = float((central_pred["predicted"] == central_pred["y"]).mean())
    return [
        judged(
            "max_abs_coefficient_diff",
            float(np.max(np.abs(fed - central))),
            _tolerance(tol, "logistic-regression", "max_abs_coefficient_diff"),
        ),
        judged(
            "accuracy_diff",
            abs(fed_acc - central_acc),
            _tolerance(tol, "logistic-regression", "accuracy_diff"),
        ),
        reported("federated_accuracy", fed_acc),
    ]


def random_forest(outputs: Outputs, tol: dict[str, float]) -> list[Measure]:
    from sklearn.metrics import roc_auc_score

    fed, central = prediction_pair(outputs, "random-forest")
    measures = []
    for label, frame in (("federated", fed), ("centralised", central)):
        measures.append(reported(f"{label}_accuracy", float((frame.predicted == frame.y).mean())))
    prob_columns = [c for c in fed.columns if c.startswith("prob_")]
    if len(prob_columns) == 2 and fed["y"].nunique() == 2:
        for label, frame in (("federated", fed), ("centralised", central)):
            auc = roc_auc_score(
                frame["y"].astype(str) == prob_columns[1][5:], frame[prob_columns[1]]
            )
            measures.append(reported(f"{label}_auc", float(auc)))
    measures.append(
        reported("prediction_agreement", float((fed.predicted == central.predicted).mean()))
    )
    return measures


def mean(outputs: Outputs, tol: dict[str, float]) -> list[Measure]:
    fed = pd.read_csv(outputs.coordinator / "means.csv").set_index("column")["mean"]
    central = pd.read_csv(outputs.central / "means.csv").set_index("column")["mean"]
    diff = float(np.max(np.abs(fed - central.loc[fed.index]) / np.maximum(np.abs(central), 1e-300)))
    return [judged("max_rel_mean_diff", diff, _tolerance(tol, "mean", "max_rel_mean_diff"))]


def generic(outputs: Outputs, tol: dict[str, float]) -> tuple[list[Measure], list[Skipped]]:
    """One measure per output file: its worst number against its allowed difference."""
    files, skipped = compare_outputs(
        outputs.federated, outputs.central, outputs.offsets, outputs.totals, tol
    )
    measures = [
        Measure(
            f"diff:{f.file}",
            f.worst.diff,
            f.worst.limit,
            "upper",
            f.worst.ratio <= 1,
            {**f.worst.where(), "numbers_compared": f.numbers},
        )
        for f in files
    ]
    return measures, skipped


MEASURES: dict[str, Callable[[Outputs, dict[str, float]], list[Measure]]] = {
    "pca": pca,
    "linear-regression": linear_regression,
    "logistic-regression": logistic_regression,
    "random-forest": random_forest,
    "mean": mean,
}
