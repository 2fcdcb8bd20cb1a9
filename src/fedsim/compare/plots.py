"""Pictures of a comparison, written as PNG next to comparison.json.

Federated and centralised results agree to many digits when all is well, so a picture of
the two against each other (an identity line) shows only that they agree roughly: every
agreement plot has the difference (federated minus centralised) beside it, on its own scale,
where a 1e-13 difference and its pattern are visible. Figures are built apart from saving so
that their content can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.compare.measures import Outputs, coefficient_pair, prediction_pair

MAX_LABELLED = 15
"""Coefficients labelled on the agreement scatter; with more the labels are an unreadable
cluster, and the sorted difference bars beside it name every term instead."""
MAX_BARS = 40
"""The largest differences shown as bars; more bars than this cannot be read either."""


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def coefficients_figure(outputs: Outputs) -> Any:
    """Agreement scatter (labelled when few) and the differences as bars, largest first."""
    plt = _pyplot()
    fed, central = coefficient_pair(outputs)
    diff = (fed - central).reindex((fed - central).abs().sort_values(ascending=False).index)
    shown = diff.iloc[:MAX_BARS]
    height = max(4.5, 0.22 * len(shown) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, height))
    left.scatter(central, fed, s=14)
    if len(fed) <= MAX_LABELLED:
        for term in fed.index:
            left.annotate(str(term), (central[term], fed[term]), fontsize="x-small")
    low, high = float(min(fed.min(), central.min())), float(max(fed.max(), central.max()))
    left.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    left.set_xlabel("centralised coefficient")
    left.set_ylabel("federated coefficient")
    left.set_title(f"agreement ({len(fed)} coefficients)")
    positions = np.arange(len(shown))[::-1]  # the largest difference on top
    right.barh(positions, shown.to_numpy(), color=np.where(shown >= 0, "tab:blue", "tab:red"))
    right.set_yticks(positions, [str(t) for t in shown.index], fontsize="x-small")
    right.axvline(0, color="grey", linewidth=0.8)
    right.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    more = f", the {len(shown)} largest of {len(diff)}" if len(diff) > len(shown) else ""
    right.set_title(f"difference, federated - centralised{more}")
    right.set_xlabel("difference")
    return fig


def projections_figure(outputs: Outputs) -> Any:
    """Both runs' projections, and per pooled row the difference of PC1 and PC2 (each
    component's sign aligned first: a principal component's sign is arbitrary)."""
    plt = _pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    for site, folder in outputs.federated.items():
        frame = pd.read_csv(folder / "projections.csv")
        left.scatter(frame["PC1"], frame.get("PC2", 0 * frame["PC1"]), s=10, label=site)
    central = pd.read_csv(outputs.central / "projections.csv")
    middle.scatter(central["PC1"], central.get("PC2", 0 * central["PC1"]), s=10, color="grey")
    middle.sharex(left)
    middle.sharey(left)
    left.set_title("federated (each site projects its own rows)")
    middle.set_title("centralised (pooled data)")
    for axis in (left, middle):
        axis.set_xlabel("PC1")
    left.set_ylabel("PC2")
    left.legend(fontsize="small")
    fed = outputs.stacked("projections.csv", "data.csv")
    pooled = central.set_index("row").loc[fed.index]
    for component in [c for c in ("PC1", "PC2") if c in fed.columns]:
        sign = np.sign(np.dot(fed[component], pooled[component])) or 1.0
        right.plot(fed.index, fed[component] - sign * pooled[component], ".", label=component)
    right.axhline(0, color="grey", linewidth=0.8)
    right.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    right.set_xlabel("pooled row")
    right.set_ylabel("federated - centralised")
    right.set_title("difference per row")
    right.legend(fontsize="small")
    return fig


def roc_figure(fed: pd.DataFrame, central: pd.DataFrame, score: str, positive: str) -> Any:
    """Both ROC curves on the same rows, told apart by colour, style and marker, with the
    AUC in the legend; beside them the difference of the scores per row."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    styles = {
        "federated": {"color": "tab:blue", "linestyle": "-", "linewidth": 2.5},
        "centralised": {"color": "tab:orange", "linestyle": "--", "linewidth": 1.5,
                        "marker": "o", "markersize": 3, "markevery": 0.1},
    }  # fmt: skip
    for label, frame in (("federated", fed), ("centralised", central)):
        truth = frame["y"].astype(str) == positive
        fpr, tpr, _ = roc_curve(truth, frame[score])
        auc = roc_auc_score(truth, frame[score])
        left.plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})", **styles[label])
    left.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    left.set_xlabel("false positive rate")
    left.set_ylabel("true positive rate")
    left.set_title(f"ROC curves on the same {len(fed)} rows")
    left.legend(loc="lower right")
    right.plot(fed.index, fed[score] - central[score], ".", markersize=4)
    right.axhline(0, color="grey", linewidth=0.8)
    right.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    right.set_xlabel("pooled row")
    right.set_ylabel(f"{score}: federated - centralised")
    right.set_title("difference of the scores per row")
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def draw(app: str, outputs: Outputs, dest: Path) -> list[Path]:
    if app == "pca":
        return [_save(projections_figure(outputs), dest / "projections.png")]
    if app == "linear-regression":
        return [_save(coefficients_figure(outputs), dest / "coefficients.png")]
    if app == "logistic-regression":
        fed, central = prediction_pair(outputs, app)
        return [
            _save(coefficients_figure(outputs), dest / "coefficients.png"),
            _save(roc_figure(fed, central, "probability", "1"), dest / "roc.png"),
        ]
    if app == "random-forest":
        fed, central = prediction_pair(outputs, app)
        prob = [c for c in fed.columns if c.startswith("prob_")]
        if len(prob) == 2:
            return [_save(roc_figure(fed, central, prob[1], prob[1][5:]), dest / "roc.png")]
    return []


__all__ = ["coefficients_figure", "draw", "projections_figure", "roc_figure"]
