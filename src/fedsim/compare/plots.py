"""Pictures of a comparison, written as PNG next to comparison.json."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsim.compare.measures import Outputs


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def projections(outputs: Outputs, dest: Path) -> Path:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
    for site, folder in outputs.federated.items():
        frame = pd.read_csv(folder / "projections.csv")
        left.scatter(frame["PC1"], frame.get("PC2", 0 * frame["PC1"]), s=10, label=site)
    central = pd.read_csv(outputs.central / "projections.csv")
    right.scatter(central["PC1"], central.get("PC2", 0 * central["PC1"]), s=10, color="grey")
    left.set_title("federated (each site projects its own rows)")
    right.set_title("centralised (pooled data)")
    for axis in (left, right):
        axis.set_xlabel("PC1")
    left.set_ylabel("PC2")
    left.legend(fontsize="small")
    return _save(fig, dest / "projections.png")


def coefficients(outputs: Outputs, dest: Path) -> Path:
    plt = _pyplot()
    fed = pd.read_csv(outputs.coordinator / "coefficients.csv").set_index("term")["coefficient"]
    central = pd.read_csv(outputs.central / "coefficients.csv").set_index("term")["coefficient"]
    central = central.loc[fed.index]
    fig, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(central, fed)
    for term in fed.index:
        axis.annotate(str(term), (central[term], fed[term]), fontsize="x-small")
    low, high = float(min(fed.min(), central.min())), float(max(fed.max(), central.max()))
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("centralised coefficient")
    axis.set_ylabel("federated coefficient")
    axis.set_title("coefficients: federated against centralised")
    return _save(fig, dest / "coefficients.png")


def roc_curves(
    fed: pd.DataFrame, central: pd.DataFrame, score: str, positive: str, dest: Path
) -> Path:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5, 5))
    for label, frame in (("federated", fed), ("centralised", central)):
        fpr, tpr, _ = roc_curve(frame["y"].astype(str) == positive, frame[score])
        axis.plot(fpr, tpr, label=label)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC curves on the same rows")
    axis.legend()
    return _save(fig, dest / "roc.png")


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def draw(app: str, outputs: Outputs, dest: Path) -> list[Path]:
    if app == "pca":
        return [projections(outputs, dest)]
    if app == "linear-regression":
        return [coefficients(outputs, dest)]
    if app in ("logistic-regression", "random-forest"):
        rows_from = (
            "test.csv" if app == "random-forest" and "test.csv" in outputs.offsets else ("data.csv")
        )
        fed = outputs.stacked("predictions.csv", rows_from)
        central = pd.read_csv(outputs.central / "predictions.csv").set_index("row").loc[fed.index]
        if app == "logistic-regression":
            return [coefficients(outputs, dest), roc_curves(fed, central, "probability", "1", dest)]
        prob = [c for c in fed.columns if c.startswith("prob_")]
        if len(prob) == 2:
            return [roc_curves(fed, central, prob[1], prob[1][5:], dest)]
    return []


__all__ = ["draw"]
