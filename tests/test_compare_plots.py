"""Plots a person reads, drawn from real comparisons: every agreement plot has the
difference beside it, the ROC legend gives both AUCs and the two curves look different, and
many coefficients become sorted difference bars instead of a labelled cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import datasets
from sklearn.metrics import roc_auc_score

from fedsim.compare.measures import Outputs, coefficient_pair, prediction_pair
from fedsim.compare.plots import (
    MAX_LABELLED,
    coefficients_figure,
    projections_figure,
    roc_figure,
)
from fedsim.compare.pooling import pool_inputs
from fedsim.config import load_config
from tests.test_compare import APPS, fedsim, split_study


def compared_outputs(tmp_path: Path, config: Path) -> tuple[Path, Outputs]:
    result = fedsim("compare", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    comparison = json.loads((run_dir / "comparison.json").read_text())
    for plot in comparison["plots"]:
        assert (run_dir / plot).read_bytes().startswith(b"\x89PNG")
    loaded = load_config(config)
    pooled = pool_inputs(loaded, tmp_path / "pooled-again")
    outputs = Outputs(
        federated={s.name: run_dir / "sites" / s.name / "output" for s in loaded.sites},
        central=Path(comparison["centralised_run"]) / "sites" / "central" / "output",
        offsets=pooled.offsets,
        totals=pooled.totals,
    )
    return run_dir, outputs


@pytest.fixture(autouse=True)
def _close_figures():  # type: ignore[no-untyped-def]
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_roc_curves_give_their_auc_and_differ_in_style(tmp_path: Path) -> None:
    config = split_study(tmp_path, "logistic-regression", "iid", 2)
    run_dir, outputs = compared_outputs(tmp_path, config)
    assert (run_dir / "roc.png").is_file() and (run_dir / "coefficients.png").is_file()
    fed, central = prediction_pair(outputs, "logistic-regression")
    roc, difference = roc_figure(fed, central, "probability", "1").axes
    curves = {line.get_label(): line for line in roc.get_lines() if "AUC" in line.get_label()}
    assert len(curves) == 2
    for label, frame in (("federated", fed), ("centralised", central)):
        auc = roc_auc_score(frame["y"].astype(str) == "1", frame["probability"])
        assert f"{label} (AUC {auc:.4f})" in curves
        assert f"{label} (AUC" in "".join(t.get_text() for t in roc.get_legend().get_texts())
    styles = [(c.get_linestyle(), c.get_color(), c.get_marker()) for c in curves.values()]
    assert len(set(styles)) == 2 and all(
        len(set(parts)) == 2 for parts in zip(*styles, strict=True)
    )
    # beside it, the difference of the probabilities per row, on its own scale
    points = difference.get_lines()[0].get_ydata()
    assert np.allclose(points, fed["probability"] - central["probability"], rtol=0, atol=0)
    assert "difference" in difference.get_title()


def test_many_coefficients_are_sorted_difference_bars(tmp_path: Path) -> None:
    cancer = datasets.load_breast_cancer(as_frame=True).frame
    cancer.columns = [c.replace(" ", "_") for c in cancer.columns]
    data = tmp_path / "data.csv"
    cancer.to_csv(data, index=False)
    (tmp_path / "config.yml").write_text(
        yaml.safe_dump({"fc_linear_regression": {"target": "target"}})
    )
    split = fedsim(
        "split", str(data), "--sites", "3", "--strategy", "iid", "--out", str(tmp_path / "s"),
        "--app", str(APPS / "linear-regression"), "--app-config", str(tmp_path / "config.yml"),
    )  # fmt: skip
    assert split.returncode == 0, split.stderr
    _, outputs = compared_outputs(tmp_path, Path(split.stdout.strip().splitlines()[-1]))
    fed, central = coefficient_pair(outputs)
    assert len(fed) == 31 > MAX_LABELLED
    agreement, bars = coefficients_figure(outputs).axes
    assert not agreement.texts  # no labels heaped on the scatter
    patches = bars.patches
    assert len(patches) == 31
    # bars top to bottom: largest difference first, each term named, signed as computed
    by_height = sorted(patches, key=lambda p: -p.get_y())
    widths = [p.get_width() for p in by_height]
    assert [abs(w) for w in widths] == sorted((abs(w) for w in widths), reverse=True)
    names = [
        t.get_text() for t in sorted(bars.get_yticklabels(), key=lambda t: -t.get_position()[1])
    ]
    assert np.allclose(widths, [fed[n] - central[n] for n in names], rtol=0, atol=0)


def test_projections_have_their_per_row_difference_beside_them(tmp_path: Path) -> None:
    config = split_study(tmp_path, "pca", "iid", 2)
    run_dir, outputs = compared_outputs(tmp_path, config)
    assert (run_dir / "projections.png").is_file()
    figure = projections_figure(outputs)
    assert len(figure.axes) == 3  # federated, centralised, their difference
    difference = figure.axes[2]
    lines = {line.get_label(): line for line in difference.get_lines()}
    assert {"PC1", "PC2"} <= set(lines)
    fed = outputs.stacked("projections.csv", "data.csv")
    assert len(lines["PC1"].get_ydata()) == len(fed)
    # federated and centralised agree; the difference panel shows how closely
    assert float(np.max(np.abs(lines["PC1"].get_ydata()))) < 1e-6
    assert pd.Series(lines["PC1"].get_xdata()).is_monotonic_increasing
