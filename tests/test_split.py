"""``fedsim split``: exact partitions, reproducible draws, real skew, and a config that runs."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from fedsim.cli.main import app as cli
from fedsim.cli.split_cmd import Strategy
from fedsim.config import load_config
from fedsim.errors import ConfigError, ExitCode
from fedsim.split import MIN_ROWS, STRATEGIES, split_rows
from tests.conftest import MEAN_APP, fedsim, run_dir_of

MEAN_REL = 1e-12  # relative; the same sums added in another order


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    """569 rows, 30 numeric features and a binary ``target`` (37 % / 63 %), shipped with
    scikit-learn, so no download."""
    return load_breast_cancer(as_frame=True).frame


@pytest.fixture
def cancer_csv(tmp_path: Path, cancer: pd.DataFrame) -> Path:
    path = tmp_path / "cancer.csv"
    cancer.to_csv(path, index=False)
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, ["split", *args])


def split_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [str(data), "--sites", "4", "--out", str(out), "--app", str(MEAN_APP), *extra]


def test_the_cli_offers_exactly_the_strategies_split_knows() -> None:
    assert tuple(s.value for s in Strategy) == STRATEGIES


@pytest.mark.parametrize("n_sites", [1, 4, 9])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_partitions_the_rows(
    cancer: pd.DataFrame, strategy: str, n_sites: int
) -> None:
    parts = split_rows(cancer, n_sites, strategy, None, "target", seed=3)
    assert len(parts) == n_sites
    joined = np.concatenate(parts)
    assert len(joined) == len(cancer)  # no row twice
    assert np.array_equal(np.sort(joined), np.arange(len(cancer)))  # every row once
    for part in parts:
        assert np.all(np.diff(part) > 0)  # each site keeps the source's order
        if strategy != "iid":
            assert len(part) >= MIN_ROWS


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_seed_fixes_the_split(cancer: pd.DataFrame, strategy: str) -> None:
    def cut(seed: int) -> list[np.ndarray]:
        return split_rows(cancer, 5, strategy, None, "target", seed)

    assert all(np.array_equal(a, b) for a, b in zip(cut(7), cut(7), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(cut(7), cut(8), strict=True))


def test_iid_sizes_differ_by_at_most_one(cancer: pd.DataFrame) -> None:
    sizes = [len(p) for p in split_rows(cancer, 6, "iid", None, None, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_size_skew_gives_unequal_sizes(cancer: pd.DataFrame) -> None:
    for seed in range(5):
        sizes = [len(p) for p in split_rows(cancer, 5, "size-skew", None, None, seed)]
        assert max(sizes) >= 3 * min(sizes), sizes
        assert min(sizes) >= MIN_ROWS
    # a large alpha draws near-equal proportions: the skew is alpha's doing
    even = [len(p) for p in split_rows(cancer, 5, "size-skew", 1000.0, None, 0)]
    assert max(even) < 1.3 * min(even), even


def label_skew_statistic(frame: pd.DataFrame, parts: list[np.ndarray]) -> float:
    """Mean over sites of |site's share of target 1 - the pooled share|: 0 when every site
    looks like the pooled data, up to about 0.5 when sites hold one class each."""
    pooled = frame["target"].mean()
    return float(np.mean([abs(frame["target"].iloc[p].mean() - pooled) for p in parts]))


def test_label_skew_skews_the_labels_far_more_than_iid(cancer: pd.DataFrame) -> None:
    for seed in range(5):
        skewed = label_skew_statistic(
            cancer, split_rows(cancer, 5, "label-skew", 0.1, "target", seed)
        )
        iid = label_skew_statistic(cancer, split_rows(cancer, 5, "iid", None, None, seed))
        assert skewed > 0.25, (seed, skewed)
        assert iid < 0.08, (seed, iid)
        assert skewed > 5 * iid, (seed, skewed, iid)


def test_label_skew_tops_up_sites_left_nearly_empty(cancer: pd.DataFrame) -> None:
    # alpha 0.01 puts each class almost wholly at one site: most of ten sites get nothing
    for min_rows in (MIN_ROWS, 20):
        parts = split_rows(cancer, 10, "label-skew", 0.01, "target", 0, min_rows=min_rows)
        sizes = sorted(len(p) for p in parts)
        assert sizes[0] == min_rows and sizes[1] == min_rows  # topped up, to exactly that
        assert sum(sizes) == len(cancer)


def test_label_skew_keeps_rows_whose_label_is_missing() -> None:
    frame = pd.DataFrame({"x": range(60), "y": [1.0, 2.0, np.nan] * 20})
    parts = split_rows(frame, 3, "label-skew", 0.5, "y", 0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60))


def test_split_writes_sites_pooled_data_record_and_a_valid_config(
    tmp_path: Path, cancer_csv: Path
) -> None:
    out = tmp_path / "study"
    result = invoke(*split_args(cancer_csv, out, "--strategy", "label-skew", "--label", "target"))
    assert result.exit_code == 0, result.output
    config_path = out / "fedsim.toml"
    assert result.stdout.strip().splitlines()[-1] == str(config_path)
    assert "site-4" in result.stderr and "target=1" in result.stderr  # the table

    source = pd.read_csv(cancer_csv)
    pooled = pd.read_csv(out / "pooled" / "data.csv")
    pd.testing.assert_frame_equal(pooled, source)
    assert (out / "pooled" / "data.csv").read_bytes() == cancer_csv.read_bytes()
    sites = [pd.read_csv(out / f"site-{k}" / "data.csv") for k in range(1, 5)]
    assert all(list(s.columns) == list(source.columns) for s in sites)
    regathered = pd.concat(sites).sort_values(list(source.columns), ignore_index=True)
    pd.testing.assert_frame_equal(
        regathered, source.sort_values(list(source.columns), ignore_index=True)
    )

    cfg = load_config(config_path)
    assert cfg.app == MEAN_APP
    assert cfg.seed == 0 and cfg.shorten_waits
    assert [s.name for s in cfg.sites] == ["site-1", "site-2", "site-3", "site-4"]
    assert cfg.coordinator.name == "site-1"
    assert [s.inputs for s in cfg.sites] == [[out / f"site-{k}"] for k in range(1, 5)]
    assert not (out / "config.yml").exists()

    record = json.loads((out / "split.json").read_text())
    assert record["source"] == str(cancer_csv)
    assert record["sha256"] == hashlib.sha256(cancer_csv.read_bytes()).hexdigest()
    assert (record["strategy"], record["alpha"], record["label"], record["seed"]) == (
        "label-skew",
        0.5,
        "target",
        0,
    )
    for k, site in enumerate(sites, start=1):
        entry = record["sites"][f"site-{k}"]
        assert entry["rows"] == len(site)
        expected = {str(v): int((site["target"] == v).sum()) for v in (0, 1)}
        assert entry["label_counts"] == expected


def test_the_written_config_runs_and_matches_the_pooled_means(
    tmp_path: Path, cancer: pd.DataFrame
) -> None:
    """The real thing: split with another separator and an app config, then ``fedsim run``."""
    data = tmp_path / "cancer.csv"
    cancer.to_csv(data, index=False, sep=";")
    app_config = tmp_path / "mean.yml"
    app_config.write_text(yaml.safe_dump({"fc_mean": {"sep": ";"}}))
    out = tmp_path / "study"
    split = fedsim(
        "split",
        str(data),
        *("--sites", "3", "--strategy", "size-skew", "--sep", ";", "--seed", "11"),
        *("--app-config", str(app_config), "--out", str(out), "--app", str(MEAN_APP)),
    )
    assert split.returncode == 0, split.stderr
    config_path = run_dir_of(split)
    cfg = load_config(config_path)
    assert all(s.inputs == [out / s.name, out / "config.yml"] for s in cfg.sites)
    assert (out / "config.yml").read_bytes() == app_config.read_bytes()

    result = fedsim("run", str(config_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    assert run_dir.parent == tmp_path / "runs"
    expected = pd.read_csv(out / "pooled" / "data.csv", sep=";").select_dtypes("number").mean()
    for site in ("site-1", "site-2", "site-3"):
        got = pd.read_csv(run_dir / "sites" / site / "output" / "means.csv")
        got = got.set_index("column")["mean"]
        assert list(got.index) == list(expected.index)
        for column in expected.index:
            assert got[column] == pytest.approx(expected[column], rel=MEAN_REL)


def test_the_app_is_written_relative_when_it_shares_a_folder(
    tmp_path: Path, cancer_csv: Path
) -> None:
    app = tmp_path / "apps" / "mine"
    app.mkdir(parents=True)
    (app / "main.py").write_text("")
    (app / "requirements.txt").write_text("")
    out = tmp_path / "studies" / "one"
    args = [str(cancer_csv), "--sites", "2", "--strategy", "iid", "--out", str(out)]
    result = invoke(*args, "--app", str(app))
    assert result.exit_code == 0, result.output
    written = tomllib.loads((out / "fedsim.toml").read_text())
    assert written["app"] == "../../apps/mine"
    assert load_config(out / "fedsim.toml").app == app


def test_force_replaces_an_earlier_split_and_nothing_else(tmp_path: Path, cancer_csv: Path) -> None:
    out = tmp_path / "study"
    app_config = tmp_path / "config.yml"
    app_config.write_text("fc_mean: {}\n")
    first = split_args(cancer_csv, out, "--strategy", "iid", "--app-config", str(app_config))
    assert invoke(*first).exit_code == 0
    (out / "notes.txt").write_text("mine")

    again = invoke(*split_args(cancer_csv, out, "--strategy", "iid", "--sites", "2"))
    assert again.exit_code == ExitCode.CONFIG
    assert "--force" in again.stderr
    assert (out / "site-4" / "data.csv").exists()  # untouched by the refusal

    replaced = invoke(*split_args(cancer_csv, out, "--strategy", "iid", "--sites", "2", "--force"))
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == [
        "fedsim.toml",
        "notes.txt",
        "pooled",
        "site-1",
        "site-2",
        "split.json",
    ]
    assert len(load_config(out / "fedsim.toml").sites) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": "missing.csv"}, "no such data file"),
        ({"--sites": "0"}, "--sites must be at least 1"),
        ({"--sites": "570"}, "more than the 569 rows"),
        ({"--sites": "200", "--strategy": "size-skew"}, "too few for 200 sites"),
        ({"--strategy": "random"}, "'random' is not one of"),
        ({"--alpha": "0"}, "--alpha must be greater than 0"),
        ({"--alpha": "-1", "--strategy": "iid"}, "--alpha must be greater than 0"),
        ({"--strategy": "label-skew"}, "needs --label"),
        ({"--label": "diagnosis"}, "--label: no column 'diagnosis'"),
        ({"--app": "{tmp}/no-such-app"}, "--app: no such app directory"),
        ({"--app": "{tmp}"}, "is not a FeatureCloud app directory"),
        ({"--app-config": "{tmp}/nope.yml"}, "--app-config: no such file"),
    ],
)
def test_errors_exit_2_name_the_problem_and_write_nothing(
    tmp_path: Path, cancer_csv: Path, change: dict[str, str], message: str
) -> None:
    options = {
        "--sites": "4",
        "--strategy": "size-skew",
        "--out": str(tmp_path / "study"),
        "--app": str(MEAN_APP),
    }
    options.update({k: v.format(tmp=tmp_path) for k, v in change.items() if k != "data"})
    data = tmp_path / change.get("data", cancer_csv.name)
    result = invoke(str(data), *(item for pair in options.items() for item in pair))
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "study").exists()


def test_unknown_strategy_is_a_config_error_in_the_library_too(cancer: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'random'"):
        split_rows(cancer, 3, "random")


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_a_test_fraction_outside_zero_to_one_is_refused_naming_the_option(
    tmp_path: Path, cancer_csv: Path, fraction: str
) -> None:
    out = tmp_path / "study"
    result = invoke(*split_args(cancer_csv, out, "--strategy", "iid", "--test-fraction", fraction))
    assert result.exit_code == ExitCode.CONFIG
    assert "--test-fraction" in result.output and fraction in result.output
    assert not out.exists()  # checked before anything is written
