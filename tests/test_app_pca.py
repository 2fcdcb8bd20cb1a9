"""The PCA app, through real ``fedsim run``, against PCA of the pooled data done here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from fedsim.errors import ExitCode
from tests.conftest import (
    MEAN_APP,
    ROOT,
    example_frames,
    fedsim,
    frame_sites,
    resplit,
    run_dir_of,
    write_run,
)

APP = ROOT / "apps" / "pca"
EXAMPLE = ROOT / "examples" / "pca"
EIGENVALUE_REL = 1e-8
SUBSPACE_RAD = 1e-6
PROJECTION_ABS = 1e-6
MEAN_REL = 1e-12


def run_sites(tmp_path: Path, frames: list[pd.DataFrame], config: dict) -> Path:
    result = fedsim("run", str(write_run(tmp_path, APP, frame_sites("fc_pca", frames, config))))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result)


def check_against_pooled(
    run_dir: Path, sites: list[str], frames: list[pd.DataFrame], k: int, scale: bool
) -> dict[str, float]:
    """Every site's outputs against sklearn's PCA of the pooled rows; the worst differences."""
    pooled = pd.concat(frames, ignore_index=True)
    features = [c for c in pooled.select_dtypes("number").columns if c != "target"]
    x = pooled[features].to_numpy(dtype=float)
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    z = (x - mean) / sd if scale else x - mean
    pca = PCA(svd_solver="full").fit(z)
    expected_values = pca.explained_variance_  # ddof=1, as the app's covariance
    expected_ratio = pca.explained_variance_ratio_
    expected_scores = pca.transform(z)[:, :k]

    outputs = [run_dir / "sites" / site / "output" for site in sites]
    for name in ("eigenvalues.csv", "loadings.csv", "pca.json"):
        # every site got the same broadcast and wrote the same file
        assert len({(out / name).read_bytes() for out in outputs}) == 1, name
    first = outputs[0]
    names = [f"PC{i + 1}" for i in range(k)]

    summary = json.loads((first / "pca.json").read_text())
    assert set(summary) == {"k", "n_samples", "features", "mean", "scale"}
    assert summary["k"] == k and summary["n_samples"] == len(pooled)
    assert summary["features"] == features
    assert np.allclose(summary["mean"], mean, rtol=MEAN_REL, atol=0)
    if scale:
        assert np.allclose(summary["scale"], sd, rtol=MEAN_REL, atol=0)
    else:
        assert summary["scale"] is None

    values = pd.read_csv(first / "eigenvalues.csv")
    assert list(values.columns) == ["component", "eigenvalue", "variance_explained"]
    assert list(values.component) == names
    value_err = np.max(np.abs(values.eigenvalue - expected_values[:k]) / expected_values[:k])
    assert value_err < EIGENVALUE_REL
    ratio_err = np.max(np.abs(values.variance_explained - expected_ratio[:k]) / expected_ratio[:k])
    assert ratio_err < EIGENVALUE_REL
    assert np.all(np.diff(values.eigenvalue) <= 0)

    table = pd.read_csv(first / "loadings.csv")
    assert list(table.columns) == ["feature", *names]
    assert list(table.feature) == features
    loadings = table[names].to_numpy()
    angle = float(np.max(subspace_angles(loadings, pca.components_[:k].T)))
    assert angle < SUBSPACE_RAD
    assert np.allclose(loadings.T @ loadings, np.eye(k), atol=1e-12)
    # the sign convention: each component's largest-magnitude loading is positive
    assert all(loadings[np.argmax(np.abs(loadings[:, j])), j] > 0 for j in range(k))
    signs = np.sign(np.sum(loadings * pca.components_[:k].T, axis=0))

    projection_err = 0.0
    start = 0
    for out, frame in zip(outputs, frames, strict=True):
        scores = pd.read_csv(out / "projections.csv")
        assert list(scores.columns) == ["row", *names]
        assert list(scores.row) == list(range(len(frame)))
        expected = expected_scores[start : start + len(frame)] * signs
        start += len(frame)
        diff = np.abs(scores[names].to_numpy() - expected)
        projection_err = max(projection_err, float(diff.max()))
    assert projection_err < PROJECTION_ABS
    return {
        "eigenvalue_rel": float(value_err),
        "variance_explained_rel": float(ratio_err),
        "subspace_rad": angle,
        "projection_abs": projection_err,
    }


def test_the_app_shares_the_bundled_environment() -> None:
    assert (APP / "requirements.txt").read_bytes() == (MEAN_APP / "requirements.txt").read_bytes()


def test_example_matches_pooled_pca(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "pca")
    config = tmp_path / "pca" / "fedsim.toml"
    config.write_text(config.read_text().replace('"../../apps/pca"', f'"{APP}"'))
    settings = yaml.safe_load((EXAMPLE / "config.yml").read_text())["fc_pca"]
    assert settings["scale"] is True and settings["exclude"] == ["target"]
    result = fedsim("run", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    frames = example_frames(EXAMPLE)
    assert len({len(f) for f in frames}) == 3  # uneven sites
    errors = check_against_pooled(
        run_dir, ["site-a", "site-b", "site-c"], frames, settings["k"], scale=True
    )
    print(f"pca example, scaled, k={settings['k']}: {errors}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"


def test_five_sites_centred_only_with_a_text_column(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [60, 45, 40, 25, 8])
    for i, frame in enumerate(frames):
        frame.insert(0, "cellar", f"cellar {i}")  # non-numeric: always left out
    run_dir = run_sites(tmp_path, frames, {"k": 3, "exclude": ["target"]})
    errors = check_against_pooled(
        run_dir, [f"site-{i}" for i in range(5)], frames, k=3, scale=False
    )
    print(f"pca 5 sites, centred, k=3: {errors}")


def test_two_sites_every_component(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [130, 48])
    run_dir = run_sites(tmp_path, frames, {"k": 13, "scale": True, "exclude": ["target"]})
    errors = check_against_pooled(run_dir, ["site-0", "site-1"], frames, k=13, scale=True)
    print(f"pca 2 sites, scaled, k=13: {errors}")
    values = pd.read_csv(run_dir / "sites" / "site-1" / "output" / "eigenvalues.csv")
    # a correlation matrix: the eigenvalues add up to the number of features
    assert values.eigenvalue.sum() == pytest.approx(13, rel=1e-12)
    assert values.variance_explained.sum() == pytest.approx(1, rel=1e-12)


def test_more_components_than_features_fails_clearly(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [100, 78])
    text = yaml.safe_dump({"fc_pca": {"k": 14, "exclude": ["target"]}})
    sites = {
        f"site-{i}": {"files": {"data.csv": frame.to_csv(index=False), "config.yml": text}}
        for i, frame in enumerate(frames)
    }
    result = fedsim("run", str(write_run(tmp_path, APP, sites)))
    assert result.returncode == ExitCode.SITE_FAILED
    assert "k = 14 but there are only 13 features" in result.stderr
