"""The Snakemake benchmark (workflow/): the default grid's plan, a real run of a small grid,
a failed measure that is recorded rather than fatal, and the conda environment in step with
pyproject.toml. Every run writes under the test's temporary folder (--directory and the
workflow's ``results`` key), never into the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import ROOT

SNAKEFILE = ROOT / "workflow" / "Snakefile"
PNG = b"\x89PNG"
SMALL_GRID = ["apps=[linear-regression]", "strategies=[iid,size-skew]", "sites=[2]"]


def snakemake(
    tmp_path: Path, *args: str, config: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``snakemake`` on the workflow, run from and writing under ``tmp_path``; its log (on
    stderr) and stdout together in ``.stdout``."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE)]
    command += ["--directory", str(tmp_path), *args]
    command += ["--config", f"results={tmp_path / 'results'}", *(config or [])]
    return subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


def job_stats(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table: rule -> number of jobs."""
    block = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {
        name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)\s*$", block, flags=re.M)
    }


def test_dry_run_plans_the_default_grid(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stdout
    # pca, logistic-regression and random-forest x iid, label-skew, size-skew;
    # linear-regression (no label) x iid, size-skew: 11 pairs, x 2, 3, 5 sites
    cells = 33
    assert job_stats(result.stdout) == {
        "prepare_data": 4,
        "split": cells,
        "compare": cells,
        "summary": 1,
        "report": 1,
        "all": 1,
        "total": 4 + 2 * cells + 3,
    }
    results = tmp_path / "results" / "default"
    for app, strategies in [
        ("pca", ["iid", "label-skew", "size-skew"]),
        ("linear-regression", ["iid", "size-skew"]),
        ("logistic-regression", ["iid", "label-skew", "size-skew"]),
        ("random-forest", ["iid", "label-skew", "size-skew"]),
    ]:
        assert f"{results}/data/{app}.csv" in result.stdout
        for strategy in strategies:
            for sites in (2, 3, 5):
                assert f"{results}/runs/{app}/{strategy}/{sites}/record.json" in result.stdout
        assert f"{results}/figures/{app}-measures.png" in result.stdout
    assert f"{results}/runs/linear-regression/label-skew" not in result.stdout
    compare_jobs = re.findall(r"^rule compare:\n((?:    .*\n)+)", result.stdout, flags=re.M)
    assert len(compare_jobs) == cells
    assert all(re.search(r"resources: .*fedsim_runs=1", job) for job in compare_jobs)
    assert not results.exists()  # planned, nothing run


def test_a_small_grid_runs_federated_and_centralised_and_reports(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-c2", config=SMALL_GRID)
    assert result.returncode == 0, result.stdout[-5000:]
    results = tmp_path / "results" / "linear-regression_iid-size-skew_2"  # the grid's own

    table = pd.read_csv(results / "summary.csv")
    assert sorted(set(zip(table["strategy"], table["sites"], strict=True))) == [
        ("iid", 2),
        ("size-skew", 2),
    ]
    assert set(table["app"]) == {"linear-regression"}
    assert set(table["measure"]) == {"max_abs_coefficient_diff", "r2_diff"}
    assert len(table) == 4
    assert table["passed"].dtype == bool and table["passed"].all()
    assert (table["value"] <= table["tolerance"]).all()
    assert (table["duration_s"] > 0).all()
    assert (table["bytes"] > 0).all() and (table["messages"] >= 2).all()
    assert (table["exit_code"] == 0).all()
    for strategy, run_dir in zip(table["strategy"], table["run_dir"], strict=True):
        run = Path(run_dir)
        assert run.parent == results / "runs" / "linear-regression" / strategy / "2"
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert (run / "comparison.json").is_file()

    report = (results / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 2  # the measures and the cost of the one app
    for image in images:
        assert (results / image).read_bytes().startswith(PNG)
    assert "0 beyond their tolerance" in report

    # One fedsim run at a time although -c2 would allow two: the comparisons did not overlap.
    spans = []
    for strategy in ("iid", "size-skew"):
        record = json.loads(
            (results / "runs/linear-regression" / strategy / "2/record.json").read_text()
        )
        spans.append(
            (
                datetime.fromisoformat(record["federated"]["started"]),
                datetime.fromisoformat(record["centralised"]["ended"]),
            )
        )
    first, second = sorted(spans)
    assert first[1] <= second[0], spans


def test_a_measure_beyond_its_tolerance_is_recorded_and_the_workflow_goes_on(
    tmp_path: Path,
) -> None:
    grid = ["apps=[linear-regression]", "strategies=[iid]", "sites=[2]"]
    tolerance = "tolerances={max_abs_coefficient_diff: 1.0e-300}"
    result = snakemake(tmp_path, "-c2", config=[*grid, tolerance])
    assert result.returncode == 0, result.stdout[-5000:]
    results = tmp_path / "results" / "linear-regression_iid_2"  # the grid's own folder
    table = pd.read_csv(results / "summary.csv").set_index("measure")
    assert (table["exit_code"] == 7).all()  # fedsim compare's "beyond a tolerance"
    strict = table.loc["max_abs_coefficient_diff"]
    assert strict["tolerance"] == 1e-300 and strict["value"] > 1e-300
    assert not strict["passed"]
    assert table.loc["r2_diff", "passed"]  # its own tolerance, untouched
    report = (results / "report.md").read_text()
    assert "## Failed measures" in report and "1 beyond their tolerance" in report


def test_the_forest_is_compared_on_held_out_rows_in_a_grid_of_its_own(tmp_path: Path) -> None:
    grid = ["apps=[random-forest]", "strategies=[iid]", "sites=[2]", "grid=forest-trial"]
    result = snakemake(tmp_path, "-c2", config=grid)
    assert result.returncode == 0, result.stdout[-5000:]
    results = tmp_path / "results" / "forest-trial"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["forest-trial"]
    split = results / "splits" / "random-forest" / "iid" / "2"
    assert (split / "site-1" / "test.csv").is_file() and (split / "site-2" / "test.csv").is_file()
    table = pd.read_csv(results / "summary.csv").set_index("measure")
    assert (table["exit_code"] == 0).all()
    assert table.loc["federated_accuracy", "value"] > 0.85
    assert table.loc["centralised_accuracy", "value"] > 0.85
    assert table.loc["prediction_agreement", "value"] > 0.85
    assert table["tolerance"].isna().all()  # reported, not judged
    assert (results / "report.md").is_file()


def requirement(spec: str) -> tuple[str, str | None]:
    """``name>=1.2,<2`` -> (``name``, ``1.2``); names compared as pip does."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec)
    assert match, spec
    name, constraints = match.groups()
    lower = re.search(r">=\s*([^,\s]+)", constraints)
    return re.sub(r"[-_.]+", "-", name).lower(), lower.group(1) if lower else None


def test_environment_yml_matches_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))

    wanted = [*pyproject["dependencies"], *pyproject["optional-dependencies"]["workflow"]]
    expected = dict(requirement(spec) for spec in wanted)
    found = dict(requirement(spec) for spec in conda)
    assert found.pop("python") == pyproject["requires-python"].removeprefix(">=")
    assert found.pop("pip") is None
    *pip_only, editable = pip
    found.update(requirement(spec.split("#")[0].strip()) for spec in pip_only)
    assert found == expected
    assert editable == "-e .[workflow]"
