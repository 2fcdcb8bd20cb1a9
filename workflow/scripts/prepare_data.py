"""Write one bundled app's benchmark data set and app config from scikit-learn's bundled data.

    python prepare_data.py APP --csv results/data/APP.csv --config results/data/APP.config.yml

The data sets are those of the test suite (tests/test_compare.py): wine for pca (label
``target``, excluded from the features), diabetes in its original units for
linear-regression, five standardised breast-cancer features for logistic-regression. The
Snakefile imports ``DATASETS`` to know which apps have a label (label-skew needs one).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from sklearn import datasets

LOGISTIC_FEATURES = [
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean symmetry",
    "worst area",
]


def wine() -> pd.DataFrame:
    """Wine (178 rows, 13 features, ``target`` one of three cultivars)."""
    return datasets.load_wine(as_frame=True).frame


def diabetes() -> pd.DataFrame:
    """Diabetes (442 rows, 10 features in their original units, ``target`` progression)."""
    return datasets.load_diabetes(as_frame=True, scaled=False).frame


def breast_cancer_five() -> pd.DataFrame:
    """Breast cancer (569 rows): five standardised features, so the classes overlap and the
    logistic fit exists, and ``target`` (0 malignant, 1 benign)."""
    frame = datasets.load_breast_cancer(as_frame=True).frame
    features = frame[LOGISTIC_FEATURES]
    standardised = (features - features.mean()) / features.std()
    standardised.columns = [c.replace(" ", "_") for c in LOGISTIC_FEATURES]
    return standardised.assign(target=frame["target"])


def breast_cancer_all() -> pd.DataFrame:
    """Breast cancer (569 rows, all 30 features, ``target``)."""
    frame = datasets.load_breast_cancer(as_frame=True).frame
    return frame.rename(columns=lambda column: column.replace(" ", "_"))


@dataclass(frozen=True)
class DataSet:
    make: Callable[[], pd.DataFrame]
    app_config: dict[str, Any]
    label: str | None  # the column label-skew skews; None: the app has no class label


DATASETS: dict[str, DataSet] = {
    "pca": DataSet(wine, {"fc_pca": {"k": 2, "scale": True, "exclude": ["target"]}}, "target"),
    "linear-regression": DataSet(diabetes, {"fc_linear_regression": {"target": "target"}}, None),
    "logistic-regression": DataSet(
        breast_cancer_five,
        {"fc_logistic_regression": {"target": "target", "tol": 1e-10}},
        "target",
    ),
    # The grid splits it with --test-fraction (config.yaml): every site's test.csv, and the
    # same rows pooled for the centralised run; the accuracies are reported, not judged.
    "random-forest": DataSet(
        breast_cancer_all,
        {"fc_random_forest": {"target": "target", "n_estimators": 20, "test_fraction": 0.25}},
        "target",
    ),
}


def prepare(app: str, csv: Path, config: Path) -> None:
    if app not in DATASETS:
        raise SystemExit(f"no benchmark data set for app {app!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[app]
    csv.parent.mkdir(parents=True, exist_ok=True)
    config.parent.mkdir(parents=True, exist_ok=True)
    dataset.make().to_csv(csv, index=False)
    config.write_text(yaml.safe_dump(dataset.app_config, sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=sorted(DATASETS))
    parser.add_argument("--csv", type=Path, required=True, help="the data set to write")
    parser.add_argument("--config", type=Path, required=True, help="the app's config.yml")
    args = parser.parse_args(argv)
    prepare(args.app, args.csv, args.config)


if __name__ == "__main__":
    main()
