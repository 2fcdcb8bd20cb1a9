"""Write the example sites' data from data sets that ship inside scikit-learn (no download).

Each example gets its own function; each splits its data set into sites of uneven sizes with
a fixed seed, so the files are the same on every run:

    python examples/make_example_data.py                 # every example
    python examples/make_example_data.py pca             # only the named ones
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets

HERE = Path(__file__).resolve().parent
SEED = 20240611


def write_sites(
    example: str, frame: pd.DataFrame, sizes: Sequence[int], seed: int = SEED
) -> list[Path]:
    """Shuffle ``frame`` with ``seed`` and write consecutive slices of ``sizes`` rows as
    ``examples/<example>/data/site-a/data.csv``, ``site-b``, ... (index not written)."""
    if sum(sizes) != len(frame):
        raise ValueError(f"{example}: site sizes {list(sizes)} do not add up to {len(frame)}")
    order = np.random.default_rng(seed).permutation(len(frame))
    written = []
    start = 0
    for i, size in enumerate(sizes):
        folder = HERE / example / "data" / f"site-{chr(ord('a') + i)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "data.csv"
        frame.iloc[order[start : start + size]].to_csv(path, index=False)
        written.append(path)
        start += size
    return written


def make_pca() -> list[Path]:
    """Wine (178 rows, 13 numeric features and the class label ``target``) over 3 sites."""
    wine = datasets.load_wine(as_frame=True).frame
    return write_sites("pca", wine, [90, 55, 33])


def make_linear_regression() -> list[Path]:
    """Diabetes in its original units (442 rows, 10 features, ``target``) over 3 sites."""
    diabetes = datasets.load_diabetes(as_frame=True, scaled=False).frame
    return write_sites("linear-regression", diabetes, [220, 140, 82])


# ---- logistic regression and random forest (breast cancer) ---------------------------------

LOGISTIC_FEATURES = [
    "mean_radius",
    "mean_texture",
    "mean_smoothness",
    "mean_compactness",
    "mean_symmetry",
]


def breast_cancer() -> pd.DataFrame:
    """Breast cancer Wisconsin (569 rows, 30 features, ``target`` 0 malignant / 1 benign),
    with the columns' spaces replaced by underscores."""
    frame = datasets.load_breast_cancer(as_frame=True).frame
    return frame.rename(columns=lambda column: column.replace(" ", "_"))


def make_logistic_regression() -> list[Path]:
    """Five standardised breast-cancer features and ``target`` over 3 sites (280, 180, 109).

    Few features, so the classes overlap and the maximum-likelihood fit exists (Newton
    converges); standardised over the pooled rows and rounded to 6 decimals."""
    frame = breast_cancer()
    features = frame[LOGISTIC_FEATURES]
    standardised = ((features - features.mean()) / features.std()).round(6)
    return write_sites(
        "logistic-regression", standardised.assign(target=frame["target"]), [280, 180, 109]
    )


def make_random_forest() -> list[Path]:
    """All 30 breast-cancer features and ``target`` over 3 sites (260, 190, 119 rows), each
    split into ``data.csv`` (training, 75 %) and ``test.csv`` (25 %)."""
    frame = breast_cancer()
    sizes = [260, 190, 119]
    rng = np.random.default_rng(SEED + 1)
    order = rng.permutation(len(frame))
    written = []
    start = 0
    for i, size in enumerate(sizes):
        folder = HERE / "random-forest" / "data" / f"site-{chr(ord('a') + i)}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = frame.iloc[order[start : start + size]]
        n_test = size // 4
        for name, part in (("data.csv", rows.iloc[n_test:]), ("test.csv", rows.iloc[:n_test])):
            part.to_csv(folder / name, index=False, float_format="%.6g")
            written.append(folder / name)
        start += size
    return written


MAKERS: dict[str, Callable[[], list[Path]]] = {
    "pca": make_pca,
    "linear-regression": make_linear_regression,
    "logistic-regression": make_logistic_regression,
    "random-forest": make_random_forest,
}


def main(argv: Sequence[str]) -> None:
    names = list(argv) or list(MAKERS)
    unknown = [name for name in names if name not in MAKERS]
    if unknown:
        raise SystemExit(f"unknown examples {unknown}; known: {sorted(MAKERS)}")
    for name in names:
        for path in MAKERS[name]():
            print(path.relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
