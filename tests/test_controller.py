"""More of the controller: older apps, lingering participants, workflows, app Pythons,
reproducibility."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
import yaml

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT, fedsim, run_dir_of, write_run

TEST_APPS = ROOT / "tests" / "apps"


def test_an_older_template_app_runs_unmodified(tmp_path: Path) -> None:
    data = {"hub": [1.0, 2.0, 3.0], "clinic": [10.0], "lab": [4.0, 5.0]}
    sites = {
        name: {"files": {"data.csv": "value\n" + "\n".join(map(str, values)) + "\n"}}
        for name, values in data.items()
    }
    result = fedsim("run", str(write_run(tmp_path, TEST_APPS / "v1_mean", sites)))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    pooled = [v for values in data.values() for v in values]
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in data:
        got = json.loads((run_dir / "sites" / name / "output" / "mean.json").read_text())
        assert got["mean"] == pytest.approx(sum(pooled) / len(pooled), rel=1e-12)
        assert summary["sites"][name]["app"]["template"] == "v1"


def test_the_run_ends_with_the_coordinator_when_participants_never_finish(tmp_path: Path) -> None:
    sites = {
        "hub": {"behave": {"value": 1.0, "linger": True}},
        "clinic": {"behave": {"value": 2.0, "linger": True}},
    }
    started = time.monotonic()
    result = fedsim("run", str(write_run(tmp_path, BEHAVE_APP, sites)))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    run_dir = run_dir_of(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["sites"]["hub"]["status"] == "finished"
    assert summary["sites"]["clinic"]["status"] == "stopped"
    # the participant's result was written before it was stopped
    assert json.loads((run_dir / "sites" / "clinic" / "output" / "sum.json").read_text()) == {
        "sum": 3.0
    }


def workflow_config(tmp_path: Path, second_step: dict) -> Path:
    rng_rows = {"hub": [[1.0, 2.0], [3.0, 4.0]], "clinic": [[5.0, 6.0]], "lab": [[7.0, 8.0]]}
    sites = []
    for i, (name, rows) in enumerate(rng_rows.items()):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        frame = pd.DataFrame(rows, columns=["x", "y"])
        frame.to_csv(folder / "data.csv", index=False)
        sites.append({"name": name, "inputs": [f"data/{name}"], "coordinator": i == 0})
    (tmp_path / "scale.yml").write_text(yaml.safe_dump({"scale": {"factor": 2}}))
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"scale": {"factor": 2}}))
    config = {
        "output_dir": str(tmp_path / "runs"),
        "timeout": 120,
        "shorten_waits": True,
        "steps": [
            {"app": str(TEST_APPS / "scale"), "inputs": ["config.yml"]},
            second_step,
        ],
        "sites": sites,
    }
    path = tmp_path / "fedsim.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_a_two_step_workflow_passes_each_sites_output_on(tmp_path: Path) -> None:
    result = fedsim("run", str(workflow_config(tmp_path, {"app": str(MEAN_APP)})))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    for name in ("hub", "clinic", "lab"):
        step1 = run_dir / "sites" / name / "steps" / "1-scale"
        step2 = run_dir / "sites" / name / "steps" / "2-mean"
        assert (step1 / "output" / "data.csv").is_file() and (step1 / "site.log").is_file()
        means = pd.read_csv(step2 / "output" / "means.csv").set_index("column")["mean"]
        # the mean of the doubled pooled data (x: 1,3,5,7; y: 2,4,6,8)
        assert means["x"] == pytest.approx(8.0) and means["y"] == pytest.approx(10.0)
        final = pd.read_csv(run_dir / "sites" / name / "output" / "means.csv")
        assert final.equals(pd.read_csv(step2 / "output" / "means.csv"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["finished", "finished"]
    traffic = pd.read_csv(run_dir / "traffic.csv")
    assert set(traffic.step) == {2}  # the scale step sends nothing


def test_a_failing_step_stops_the_workflow(tmp_path: Path) -> None:
    # the step's own config.yml replaces the one the scale step leaves in its output
    (tmp_path / "fail").mkdir()
    (tmp_path / "fail" / "config.yml").write_text(yaml.safe_dump({"behave": {"fail": True}}))
    config = workflow_config(tmp_path, {"app": str(BEHAVE_APP), "inputs": ["fail"]})
    result = fedsim("run", str(config))
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    assert "in step 2 (behave)" in result.stderr
    assert "deliberate failure" in result.stderr
    summary = json.loads((run_dir_of(result) / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["finished", "failed"]


def test_an_app_on_another_python_with_its_own_requirements(tmp_path: Path) -> None:
    requirements = tmp_path / "old-pins.txt"
    requirements.write_text(
        (BEHAVE_APP / "requirements.txt").read_text() + "# pinned for Python 3.10\n"
    )
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"value": 1}}, "clinic": {"behave": {"value": 2}}},
        python="3.10",
        requirements=str(requirements),
    )
    result = fedsim("run", str(config), timeout=600)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    assert (run_dir / "sites" / "clinic" / "output" / "python.txt").read_text() == "3.10\n"
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["steps"][0]["python"].startswith("3.10")
    assert any(p.lower().startswith("featurecloud==") for p in versions["steps"][0]["packages"])


def test_a_python_that_cannot_be_found_is_a_config_error(tmp_path: Path) -> None:
    config = write_run(tmp_path, BEHAVE_APP, {"hub": {}, "clinic": {}}, python="2.1")
    result = fedsim("validate", str(config))
    assert result.returncode == ExitCode.CONFIG
    assert "python: no Python 2.1 found" in " ".join(result.stderr.split())


def test_the_same_seed_gives_byte_identical_outputs(tmp_path: Path) -> None:
    values = [[0.5, 1.5], [2.0, -3.0], [4.0, 0.25]]
    sites = {
        f"site-{i}": {"files": {"config.yml": yaml.safe_dump({"dp": {"value": v}})}}
        for i, v in enumerate(values)
    }
    outputs = []
    for attempt, seed in enumerate((7, 7, 8)):
        config = write_run(tmp_path / str(attempt), TEST_APPS / "dp", sites, seed=seed)
        result = fedsim("run", str(config))
        assert result.returncode == 0, result.stderr
        run_dir = run_dir_of(result)
        outputs.append((run_dir / "sites" / "site-0" / "output" / "received.json").read_bytes())
        assert json.loads((run_dir / "versions.json").read_text())["seed"] == seed
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
