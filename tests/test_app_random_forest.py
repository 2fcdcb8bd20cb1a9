"""The random-forest app, run for real: well-formed outputs, and the forest is the union.

Its accuracy is reported, not compared with a centralised forest (a union of local forests
is a different model). What is checked exactly: every site's probabilities are those of the
union of the forests each site grows with seed + its index, rebuilt here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
import yaml
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from tests.conftest import ROOT, fedsim, run_dir_of, write_run

APP = ROOT / "apps" / "random-forest"
EXAMPLE = ROOT / "examples" / "random-forest"
SITES = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="module", autouse=True)
def app_sklearn_version() -> str:
    """Build this app's environment (it adds scikit-learn) outside any run's timeout, in a
    child process (a build's pipes are then none of this test process's business)."""
    build = (
        "import sys; from pathlib import Path; from fedsim.appenv import ensure_app_env, "
        "env_python; print(env_python(ensure_app_env(Path(sys.argv[1]))))"
    )
    env = subprocess.run(
        [sys.executable, "-c", build, str(APP)], capture_output=True, text=True, timeout=600
    )
    assert env.returncode == 0, env.stderr
    out = subprocess.run(
        [env.stdout.strip().splitlines()[-1], "-c", "import sklearn; print(sklearn.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def run_ok(config: Path, cwd: Path | None = None) -> Path:
    result = fedsim("run", str(config), cwd=cwd)
    run_dir = run_dir_of(result)
    assert result.returncode == 0, (run_dir / "fedsim.log").read_text()[-4000:]
    return run_dir


def outputs(run_dir: Path, site: str) -> tuple[pd.DataFrame, dict]:
    out = run_dir / "sites" / site / "output"
    return pd.read_csv(out / "predictions.csv"), json.loads((out / "metrics.json").read_text())


def check_well_formed(predictions: pd.DataFrame, metrics: dict, test: pd.DataFrame) -> None:
    """``test``: the site's test rows, indexed by their row number in their file."""
    classes = metrics["classes"]
    prob_columns = [f"prob_{c}" for c in classes]
    assert list(predictions.columns) == ["row", "y", "predicted", *prob_columns]
    assert list(predictions.row) == list(test.index)
    assert list(predictions.y) == list(test["target"])
    probabilities = predictions[prob_columns].to_numpy()
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert set(predictions.predicted) <= set(classes)
    assert list(predictions.predicted) == [classes[j] for j in probabilities.argmax(axis=1)]
    accuracy = float(np.mean(predictions.predicted == predictions.y))
    assert metrics["accuracy"] == pytest.approx(accuracy)
    if len(classes) == 2:
        auc = roc_auc_score(predictions.y == classes[1], probabilities[:, 1])
    else:
        auc = roc_auc_score(
            predictions.y, probabilities, multi_class="ovr", average="macro", labels=classes
        )
    assert metrics["auc"] == pytest.approx(auc)
    assert metrics["n_test"] == len(test)


def union_probabilities(trains: list[pd.DataFrame], x: np.ndarray, n: int, seed: int, depth=None):
    """The forest each site grows (seed + index in the sorted site list), united: the mean of
    all trees' probabilities, which is predict_proba of one forest holding every tree."""
    forests = [
        RandomForestClassifier(n_estimators=n, max_depth=depth, random_state=seed + i).fit(
            train.drop(columns="target").to_numpy(dtype=float), train["target"].to_numpy()
        )
        for i, train in enumerate(trains)
    ]
    union = forests[0]
    union.estimators_ = [tree for forest in forests for tree in forest.estimators_]
    union.n_estimators = len(union.estimators_)
    return union.predict_proba(x)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, workdir / "example")
    config = workdir / "example" / "fedsim.toml"
    text = config.read_text().replace('"../../apps/random-forest"', f'"{APP}"')
    config.write_text(text)
    return run_ok(config, cwd=workdir)  # its runs/ lands there


def test_example_outputs_are_well_formed_and_accurate(example_run: Path) -> None:
    for site in SITES:
        predictions, metrics = outputs(example_run, site)
        check_well_formed(predictions, metrics, pd.read_csv(EXAMPLE / "data" / site / "test.csv"))
        assert metrics["classes"] == [0, 1]
        assert metrics["n_trees"] == 150  # 50 per site
        assert metrics["accuracy"] > 0.8
        assert metrics["auc"] > 0.8
        print(f"{site}: accuracy {metrics['accuracy']:.4f}, AUC {metrics['auc']:.4f}")


def test_example_forest_is_the_union_of_the_site_forests(
    example_run: Path, app_sklearn_version: str
) -> None:
    if app_sklearn_version != sklearn.__version__:
        pytest.skip(f"the app has scikit-learn {app_sklearn_version}, the tests have another")
    trains = [pd.read_csv(EXAMPLE / "data" / site / "data.csv") for site in SITES]
    for site in SITES:
        test = pd.read_csv(EXAMPLE / "data" / site / "test.csv")
        expected = union_probabilities(trains, test.drop(columns="target").to_numpy(), 50, 0)
        predictions, _ = outputs(example_run, site)
        np.testing.assert_allclose(predictions[["prob_0", "prob_1"]], expected, atol=1e-12)
    # the trees travel, the rows do not: participants send trees once, receive the forest once
    traffic = pd.read_csv(example_run / "traffic.csv")
    assert sorted(zip(traffic.sender, traffic.memo, strict=True)) == [
        ("site-a", "forest"),
        ("site-a", "forest"),
        ("site-b", "trees"),
        ("site-c", "trees"),
    ]


def test_two_sites_multiclass_hold_out_their_test_rows(
    tmp_path: Path, app_sklearn_version: str
) -> None:
    """No test.csv: each site holds out test_fraction of its rows (with its own seed)."""
    wine = datasets.load_wine(as_frame=True).frame
    order = np.random.default_rng(5).permutation(len(wine))
    parts = [wine.iloc[order[:110]].reset_index(drop=True), wine.iloc[order[110:]]]
    parts[1] = parts[1].reset_index(drop=True)
    config = yaml.safe_dump(
        {"fc_random_forest": {"target": "target", "n_estimators": 20, "seed": 7}}
    )
    sites = {
        f"site-{i}": {"files": {"data.csv": p.to_csv(index=False), "config.yml": config}}
        for i, p in enumerate(parts)
    }
    run_dir = run_ok(write_run(tmp_path, APP, sites))
    trains, tests = [], []
    for i, part in enumerate(parts):
        train, test = train_test_split(part, test_size=0.25, random_state=7 + i)
        trains.append(train.sort_index())
        tests.append(test.sort_index())
    for i, test in enumerate(tests):
        predictions, metrics = outputs(run_dir, f"site-{i}")
        check_well_formed(predictions, metrics, test)
        assert metrics["classes"] == [0, 1, 2]
        assert metrics["n_test"] == int(np.ceil(0.25 * len(parts[i])))
        assert metrics["n_trees"] == 40
        assert metrics["accuracy"] > 0.8
    if app_sklearn_version == sklearn.__version__:
        for i, test in enumerate(tests):
            expected = union_probabilities(trains, test.drop(columns="target").to_numpy(), 20, 7)
            predictions, _ = outputs(run_dir, f"site-{i}")
            np.testing.assert_allclose(
                predictions[["prob_0", "prob_1", "prob_2"]], expected, atol=1e-12
            )


def test_five_sites_shallow_trees(tmp_path: Path) -> None:
    def pooled(name: str) -> pd.DataFrame:
        frames = [pd.read_csv(EXAMPLE / "data" / site / name) for site in SITES]
        return pd.concat(frames).reset_index(drop=True)

    trains, tests = pooled("data.csv"), pooled("test.csv")
    config = yaml.safe_dump(
        {"fc_random_forest": {"target": "target", "n_estimators": 8, "max_depth": 3}}
    )
    bounds = [0, 150, 250, 330, 390, len(trains)]
    test_bounds = [0, 50, 80, 105, 125, len(tests)]
    sites = {}
    for i in range(5):
        train = trains.iloc[bounds[i] : bounds[i + 1]]
        test = tests.iloc[test_bounds[i] : test_bounds[i + 1]]
        sites[f"site-{i}"] = {
            "files": {
                "data.csv": train.to_csv(index=False),
                "test.csv": test.to_csv(index=False),
                "config.yml": config,
            }
        }
    run_dir = run_ok(write_run(tmp_path, APP, sites))
    for i in range(5):
        test = tests.iloc[test_bounds[i] : test_bounds[i + 1]].reset_index(drop=True)
        predictions, metrics = outputs(run_dir, f"site-{i}")
        check_well_formed(predictions, metrics, test)
        assert metrics["n_trees"] == 40
        assert metrics["accuracy"] > 0.8


def test_missing_target_fails_with_a_clear_message(tmp_path: Path) -> None:
    train = pd.read_csv(EXAMPLE / "data" / "site-c" / "data.csv")
    sites = {
        f"site-{i}": {
            "files": {"data.csv": train.to_csv(index=False), "config.yml": "fc_random_forest: {}\n"}
        }
        for i in range(2)
    }
    result = fedsim("run", str(write_run(tmp_path, APP, sites)))
    assert result.returncode == 4
    assert "target is required" in (run_dir_of(result) / "fedsim.log").read_text()
