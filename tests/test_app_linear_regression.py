"""The linear regression app, through real ``fedsim run``, against least squares on the pooled
data done here (numpy's lstsq, QR and an augmented system for ridge; no normal equations)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

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

APP = ROOT / "apps" / "linear-regression"
EXAMPLE = ROOT / "examples" / "linear-regression"
COEFFICIENT_ABS = 1e-8
STATISTIC_REL = 1e-8  # standard errors, R^2, RSS, sigma^2, predictions


def run_sites(tmp_path: Path, frames: list[pd.DataFrame], config: dict) -> Path:
    result = fedsim(
        "run", str(write_run(tmp_path, APP, frame_sites("fc_linear_regression", frames, config)))
    )
    assert result.returncode == 0, result.stderr
    return run_dir_of(result)


def pooled_fit(
    frames: list[pd.DataFrame], features: list[str], intercept: bool, ridge: float
) -> dict:
    """The centralised fit. Ridge as ordinary least squares on X stacked over sqrt(ridge) I'."""
    pooled = pd.concat(frames, ignore_index=True)
    x = pooled[features].to_numpy(dtype=float)
    if intercept:
        x = np.column_stack([np.ones(len(x)), x])
    y = pooled["target"].to_numpy(dtype=float)
    n, p = x.shape
    penalty = np.sqrt(ridge) * np.eye(p)
    if intercept:
        penalty = penalty[1:]
    augmented = np.vstack([x, penalty])
    beta = np.linalg.lstsq(augmented, np.concatenate([y, np.zeros(len(penalty))]), rcond=None)[0]
    residuals = y - x @ beta
    rss = float(residuals @ residuals)
    sigma2 = rss / (n - p)
    # (X'X + ridge I')^-1 = (R'R)^-1 with R from the QR of the augmented matrix
    r_inv = np.linalg.inv(np.linalg.qr(augmented, mode="r"))
    a_inv = r_inv @ r_inv.T
    std_error = np.sqrt(np.diag(sigma2 * a_inv @ (x.T @ x) @ a_inv))
    r2 = 1 - rss / float(np.sum((y - y.mean()) ** 2))
    return {"beta": beta, "std_error": std_error, "rss": rss, "sigma2": sigma2, "r2": r2, "n": n}


def rel(got, expected) -> float:
    return float(np.max(np.abs(np.asarray(got) - expected) / np.abs(expected)))


def check_against_pooled(
    run_dir: Path,
    sites: list[str],
    frames: list[pd.DataFrame],
    features: list[str],
    intercept: bool = True,
    ridge: float = 0.0,
) -> dict[str, float]:
    """Every site's outputs against the pooled fit; the worst differences."""
    fit = pooled_fit(frames, features, intercept, ridge)
    outputs = [run_dir / "sites" / site / "output" for site in sites]
    for name in ("coefficients.csv", "metrics.json"):
        # every site got the same broadcast and wrote the same file
        assert len({(out / name).read_bytes() for out in outputs}) == 1, name

    table = pd.read_csv(outputs[0] / "coefficients.csv")
    assert list(table.columns) == ["term", "coefficient", "std_error"]
    assert list(table.term) == (["intercept"] if intercept else []) + features
    coefficient_err = float(np.max(np.abs(table.coefficient - fit["beta"])))
    assert coefficient_err < COEFFICIENT_ABS
    se_err = rel(table.std_error, fit["std_error"])
    assert se_err < STATISTIC_REL

    metrics = json.loads((outputs[0] / "metrics.json").read_text())
    assert set(metrics) == {"r2", "n", "rss", "sigma2", "features", "target", "ridge"}
    assert metrics["n"] == fit["n"] and metrics["features"] == features
    assert metrics["target"] == "target" and metrics["ridge"] == ridge
    stats_err = max(rel(metrics[key], fit[key]) for key in ("r2", "rss", "sigma2"))
    assert stats_err < STATISTIC_REL

    prediction_err = 0.0
    for out, frame in zip(outputs, frames, strict=True):
        predictions = pd.read_csv(out / "predictions.csv")
        assert list(predictions.columns) == ["row", "y", "predicted"]
        assert list(predictions.row) == list(range(len(frame)))
        assert np.array_equal(predictions.y.to_numpy(), frame["target"].to_numpy(dtype=float))
        x = frame[features].to_numpy(dtype=float)
        expected = x @ fit["beta"][1:] + fit["beta"][0] if intercept else x @ fit["beta"]
        prediction_err = max(prediction_err, rel(predictions.predicted, expected))
    assert prediction_err < STATISTIC_REL
    return {
        "coefficient_abs": coefficient_err,
        "std_error_rel": se_err,
        "r2_rss_sigma2_rel": stats_err,
        "prediction_rel": prediction_err,
    }


FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def test_the_app_shares_the_bundled_environment() -> None:
    assert (APP / "requirements.txt").read_bytes() == (MEAN_APP / "requirements.txt").read_bytes()


def test_example_matches_pooled_least_squares(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "lr")
    config = tmp_path / "lr" / "fedsim.toml"
    config.write_text(config.read_text().replace('"../../apps/linear-regression"', f'"{APP}"'))
    settings = yaml.safe_load((EXAMPLE / "config.yml").read_text())["fc_linear_regression"]
    assert settings["target"] == "target" and settings["ridge"] == 0 and settings["intercept"]
    result = fedsim("run", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = example_frames(EXAMPLE)
    assert len({len(f) for f in frames}) == 3  # uneven sites
    errors = check_against_pooled(
        run_dir_of(result), ["site-a", "site-b", "site-c"], frames, FEATURES
    )
    print(f"linear regression example: {errors}")


def test_ridge_two_sites_with_a_text_column(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [300, 142])
    for i, frame in enumerate(frames):
        frame.insert(0, "hospital", f"hospital {i}")  # non-numeric: not a default feature
    ridge = 200.0
    run_dir = run_sites(tmp_path, frames, {"target": "target", "ridge": ridge})
    errors = check_against_pooled(run_dir, ["site-0", "site-1"], frames, FEATURES, ridge=ridge)
    print(f"linear regression ridge={ridge}, 2 sites: {errors}")
    # the penalty really changed the fit: ridge is not OLS
    ols = pooled_fit(frames, FEATURES, intercept=True, ridge=0.0)["beta"]
    table = pd.read_csv(run_dir / "sites" / "site-1" / "output" / "coefficients.csv")
    assert np.max(np.abs(table.coefficient - ols) / np.abs(ols)) > 0.01


def test_five_sites_chosen_features_without_intercept(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [150, 120, 90, 60, 22])
    features = ["bmi", "bp", "s5"]
    run_dir = run_sites(
        tmp_path, frames, {"target": "target", "features": features, "intercept": False}
    )
    sites = [f"site-{i}" for i in range(5)]
    errors = check_against_pooled(run_dir, sites, frames, features, intercept=False)
    print(f"linear regression no intercept, 5 sites: {errors}")


def test_a_missing_target_fails_clearly(tmp_path: Path) -> None:
    frames = resplit(EXAMPLE, [221, 221])
    config = write_run(tmp_path, APP, frame_sites("fc_linear_regression", frames, {"ridge": 1.0}))
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED
    assert "fc_linear_regression.target is required" in result.stderr
