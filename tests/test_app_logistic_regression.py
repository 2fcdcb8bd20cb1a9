"""The logistic-regression app, run for real: the federated fit is the pooled fit.

The reference is computed here, independently of the app, on the pooled rows: iteratively
reweighted least squares written as a (ridge-augmented) least-squares problem, cross-checked
against scikit-learn's Newton-Cholesky solver.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from tests.conftest import ROOT, fedsim, run_dir_of, write_run

APP = ROOT / "apps" / "logistic-regression"
EXAMPLE = ROOT / "examples" / "logistic-regression"
SITES = ("site-a", "site-b", "site-c")
COEFFICIENT_TOLERANCE = 1e-5  # absolute, against the pooled fit (achieved: ~1e-15)


def pooled_example() -> pd.DataFrame:
    return pd.concat(pd.read_csv(EXAMPLE / "data" / s / "data.csv") for s in SITES)


def design(frame: pd.DataFrame, features: list[str], intercept: bool) -> np.ndarray:
    x = frame[features].to_numpy(dtype=float)
    return np.column_stack([np.ones(len(frame)), x]) if intercept else x


def centralised_fit(x: np.ndarray, y: np.ndarray, ridge: float, intercept: bool) -> np.ndarray:
    """IRLS: each step is a weighted least-squares fit of the working response, the ridge as
    extra rows sqrt(ridge)·I (the intercept's row left out)."""
    k = x.shape[1]
    penalised = np.ones(k)
    if intercept:
        penalised[0] = 0.0
    augment = np.sqrt(ridge) * np.diag(penalised)
    beta = np.zeros(k)
    for _ in range(200):
        eta = x @ beta
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1.0 - p)
        z = eta + (y - p) / w
        a = np.vstack([np.sqrt(w)[:, None] * x, augment])
        b = np.concatenate([np.sqrt(w) * z, np.zeros(k)])
        new = np.linalg.lstsq(a, b, rcond=None)[0]
        if np.max(np.abs(new - beta)) < 1e-14:
            return new
        beta = new
    raise AssertionError("the reference fit did not converge")


def sklearn_fit(frame: pd.DataFrame, features: list[str], ridge: float) -> np.ndarray:
    """scikit-learn minimises C·(negative log-likelihood) + ||w||²/2, i.e. ridge = 1/C."""
    model = LogisticRegression(
        C=1.0 / ridge if ridge > 0 else np.inf,
        solver="newton-cholesky",
        tol=1e-14,
        max_iter=1000,
    ).fit(frame[features].to_numpy(dtype=float), frame["target"].to_numpy())
    return np.concatenate([model.intercept_, model.coef_[0]])


def hessian(x: np.ndarray, beta: np.ndarray, ridge: float, intercept: bool) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    penalty = np.full(x.shape[1], ridge)
    if intercept:
        penalty[0] = 0.0
    return x.T @ (x * (p * (1.0 - p))[:, None]) + np.diag(penalty)


def log_likelihood(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> float:
    eta = x @ beta
    return float(np.sum(y * eta - np.log1p(np.exp(eta))))


def config_text(**options: object) -> str:
    return yaml.safe_dump({"fc_logistic_regression": {"target": "target", **options}})


def run_sites(tmp_path: Path, parts: list[pd.DataFrame], **options: object) -> Path:
    """One run with one site per part (each with the same config.yml); its run directory."""
    config = config_text(**options)
    sites = {
        f"site-{i}": {"files": {"data.csv": part.to_csv(index=False), "config.yml": config}}
        for i, part in enumerate(parts)
    }
    result = fedsim("run", str(write_run(tmp_path, APP, sites)))
    run_dir = run_dir_of(result)
    assert result.returncode == 0, (run_dir / "fedsim.log").read_text()[-4000:]
    return run_dir


def split(frame: pd.DataFrame, sizes: list[int], seed: int) -> list[pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(frame)
    return [frame.iloc[order[a:b]] for a, b in itertools.pairwise(bounds)]


def outputs(run_dir: Path, site: str) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    out = run_dir / "sites" / site / "output"
    return (
        pd.read_csv(out / "coefficients.csv"),
        json.loads((out / "metrics.json").read_text()),
        pd.read_csv(out / "predictions.csv"),
    )


def check_against_pooled(
    run_dir: Path,
    parts: dict[str, pd.DataFrame],
    features: list[str],
    ridge: float = 0.0,
    intercept: bool = True,
) -> float:
    """Every site's outputs against the pooled fit; returns the largest coefficient error."""
    pooled = pd.concat(parts.values())
    x, y = design(pooled, features, intercept), pooled["target"].to_numpy(dtype=float)
    expected = centralised_fit(x, y, ridge, intercept)
    if intercept:  # the independent cross-check of the reference itself
        np.testing.assert_allclose(sklearn_fit(pooled, features, ridge), expected, atol=1e-7)
    std_errors = np.sqrt(np.diag(np.linalg.inv(hessian(x, expected, ridge, intercept))))
    terms = (["intercept"] if intercept else []) + features
    worst = 0.0
    for site, part in parts.items():
        coefficients, metrics, predictions = outputs(run_dir, site)
        assert list(coefficients.columns) == ["term", "coefficient", "std_error"]
        assert list(coefficients.term) == terms
        error = float(np.max(np.abs(coefficients.coefficient.to_numpy() - expected)))
        assert error < COEFFICIENT_TOLERANCE, (site, coefficients, expected)
        worst = max(worst, error)
        np.testing.assert_allclose(coefficients.std_error, std_errors, rtol=1e-6)

        assert metrics["converged"] is True
        assert 1 <= metrics["iterations"] <= 50
        assert metrics["log_likelihood"] == pytest.approx(log_likelihood(x, y, expected), abs=1e-8)
        assert metrics["n"] == len(part) and metrics["n_total"] == len(pooled)
        assert metrics["features"] == features and metrics["target"] == "target"

        assert list(predictions.columns) == ["row", "y", "probability", "predicted"]
        assert list(predictions.row) == list(range(len(part)))
        assert list(predictions.y) == list(part["target"])
        own = 1.0 / (1.0 + np.exp(-(design(part, features, intercept) @ expected)))
        np.testing.assert_allclose(predictions.probability, own, atol=1e-8)
        assert list(predictions.predicted) == list((own >= 0.5).astype(int))
        assert metrics["accuracy"] == pytest.approx(np.mean((own >= 0.5) == part["target"]))
    print(f"{len(parts)} sites, ridge {ridge}: max |coefficient - pooled fit| = {worst:.3g}")
    return worst


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, workdir / "example")
    config = workdir / "example" / "fedsim.toml"
    text = config.read_text().replace('"../../apps/logistic-regression"', f'"{APP}"')
    config.write_text(text)
    result = fedsim("run", str(config), cwd=workdir)  # its runs/ lands there
    run_dir = run_dir_of(result)
    assert result.returncode == 0, (run_dir / "fedsim.log").read_text()[-4000:]
    return run_dir


def test_example_matches_the_pooled_fit(example_run: Path) -> None:
    parts = {s: pd.read_csv(EXAMPLE / "data" / s / "data.csv") for s in SITES}
    features = [c for c in parts["site-a"].columns if c != "target"]
    assert len(features) == 5
    check_against_pooled(example_run, parts, features)


def test_example_sites_agree_and_only_sums_travel(example_run: Path) -> None:
    first = outputs(example_run, "site-a")[0]
    for site in SITES[1:]:
        pd.testing.assert_frame_equal(outputs(example_run, site)[0], first)
    traffic = pd.read_csv(example_run / "traffic.csv")
    iterations = outputs(example_run, "site-a")[1]["iterations"]
    # one stats round per iteration from each participant, one broadcast per iteration
    stats = traffic[traffic.memo.str.startswith("stats-")]
    assert len(stats) == 2 * iterations
    assert set(stats.sender) == {"site-b", "site-c"} and set(stats.receiver) == {"site-a"}
    assert stats.bytes.max() < 2000  # 6 terms: 6 + 36 + 2 numbers, pickled; never the rows
    assert sorted(traffic[traffic.sender == "site-a"].memo.unique()) == sorted(
        f"beta-{i}" for i in range(iterations + 1)
    )


def test_ridge_two_sites_matches_the_penalised_pooled_fit(tmp_path: Path) -> None:
    pooled = pooled_example()
    features = [c for c in pooled.columns if c != "target"]
    parts = split(pooled, [400, 169], seed=1)
    run_dir = run_sites(tmp_path, parts, ridge=5.0)
    worst = check_against_pooled(
        run_dir, {f"site-{i}": p for i, p in enumerate(parts)}, features, ridge=5.0
    )
    assert worst < COEFFICIENT_TOLERANCE
    unpenalised = centralised_fit(design(pooled, features, True), pooled.target, 0.0, True)
    shrunk = outputs(run_dir, "site-0")[0].coefficient.to_numpy()
    assert np.linalg.norm(shrunk[1:]) < np.linalg.norm(unpenalised[1:]) - 0.1


def test_five_sites_chosen_features_without_intercept(tmp_path: Path) -> None:
    pooled = pooled_example()
    features = ["mean_texture", "mean_radius", "mean_symmetry"]
    parts = split(pooled, [200, 150, 100, 80, 39], seed=2)
    run_dir = run_sites(tmp_path, parts, features=features, intercept=False)
    check_against_pooled(
        run_dir, {f"site-{i}": p for i, p in enumerate(parts)}, features, intercept=False
    )


def test_max_iter_stops_early_and_says_so(tmp_path: Path) -> None:
    parts = split(pooled_example(), [300, 269], seed=3)
    run_dir = run_sites(tmp_path, parts, max_iter=2)
    metrics = outputs(run_dir, "site-1")[1]
    assert metrics["iterations"] == 2 and metrics["converged"] is False


@pytest.mark.parametrize(
    ("config", "change", "message"),
    [
        ("target: target\n", lambda f: f.assign(target=f.target * 2), "must be binary 0/1"),
        ("{}\n", lambda f: f, "target is required"),
        ("target: outcome\n", lambda f: f, "no target column 'outcome'"),
    ],
)
def test_bad_target_fails_with_a_clear_message(tmp_path: Path, config, change, message) -> None:
    parts = split(pooled_example(), [300, 269], seed=4)
    text = "fc_logistic_regression:\n" + "".join(f"  {line}\n" for line in config.splitlines())
    sites = {
        f"site-{i}": {"files": {"data.csv": change(p).to_csv(index=False), "config.yml": text}}
        for i, p in enumerate(parts)
    }
    result = fedsim("run", str(write_run(tmp_path, APP, sites)))
    assert result.returncode == 4
    assert message in (run_dir_of(result) / "fedsim.log").read_text()
