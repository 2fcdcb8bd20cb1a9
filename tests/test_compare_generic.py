"""The comparison of an app fedsim does not know: every site's files, lined up, never a
pass that compared nothing. Real runs of a real FeatureCloud app (tests/apps/tables)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedsim.errors import ExitCode
from tests.conftest import ROOT, fedsim, run_dir_of, write_run

TABLES_APP = ROOT / "tests" / "apps" / "tables"
SITES = {  # x on very different scales, so that a relative tolerance matters
    "hub": [1.5, 2.25, 1e6, -3.0],
    "clinic": [0.125, 7.0, 11.0],
    "lab": [2.0, 4.0, 8.0, 16.0, 1e-3],
}


def tables_study(tmp_path: Path, write: list[str] | None = None, tolerances: str = "") -> Path:
    config = yaml.safe_dump({"tables": {"write": write}} if write else {})
    sites = {
        name: {"files": {"data.csv": pd.DataFrame({"x": x}).to_csv(index=False),
                         "config.yml": config}}
        for name, x in SITES.items()
    }  # fmt: skip
    path = write_run(tmp_path, TABLES_APP, sites)
    path.write_text(path.read_text() + tolerances)
    return path


def compared(result) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    run_dir = run_dir_of(result)
    return run_dir, json.loads((run_dir / "comparison.json").read_text())


def test_every_sites_files_are_compared_and_the_worst_number_is_named(tmp_path: Path) -> None:
    config = tables_study(tmp_path)
    result = fedsim("compare", str(config))
    assert result.returncode == ExitCode.COMPARISON, result.stderr
    run_dir, comparison = compared(result)
    measures = {m["name"]: m for m in comparison["measures"]}
    assert set(measures) == {"diff:stats.csv", "diff:centred.tsv", "diff:model.json"}
    assert comparison["passed"] is False
    assert "diff:stats.csv" in comparison["problem"] and "diff:stats.csv" in result.stderr

    # local_rows differs by design; the worst is clinic's: 3 rows against the pooled 12
    stats = measures["diff:stats.csv"]
    assert (stats["judged"], stats["bound"], stats["passed"]) == (True, "upper", False)
    assert stats["where"] == {
        "site": "clinic", "file": "stats.csv", "row": "local_rows", "column": "value",
        "federated": 3.0, "centralised": 12.0, "numbers_compared": 6,
    }  # fmt: skip
    assert stats["value"] == 9.0 and stats["limit"] < 1e-6

    # each site's own rows line up with their rows in the pooled data (by the row column)
    centred = measures["diff:centred.tsv"]
    assert centred["passed"] is True and centred["where"]["numbers_compared"] == 2 * 12
    assert centred["value"] <= centred["limit"]
    assert measures["diff:model.json"]["passed"] is True

    # the federated mean is the mean of the pooled rows
    pooled = np.concatenate([np.array(x) for x in SITES.values()])
    model = json.loads((run_dir / "sites" / "lab" / "output" / "model.json").read_text())
    assert abs(model["mean"] - pooled.mean()) <= 1e-12 * abs(pooled.mean())
    assert model["rows"] == len(pooled)

    skipped = {(s["file"], s["reason"]) for s in comparison["skipped"]}
    assert ("notes.txt", "not CSV, TSV or JSON: not compared") in skipped

    # tolerances per file (relative) and per column (absolute) decide, over the same runs
    for extra, code in (
        ("[compare.tolerances]\n'max_rel_diff:stats.csv' = 0.8\n", 0),
        ("[compare.tolerances]\n'max_abs_diff:stats.csv:value' = 8.5\n", ExitCode.COMPARISON),
    ):
        again = tables_study(tmp_path / f"tol-{code}", tolerances=extra)
        result = fedsim("compare", str(again), "--federated", str(run_dir))
        assert result.returncode == code, result.stderr
        measures = {m["name"]: m for m in compared(result)[1]["measures"]}
        assert measures["diff:stats.csv"]["where"]["site"] == "clinic"


def test_a_comparison_of_nothing_is_a_failure(tmp_path: Path) -> None:
    result = fedsim("compare", str(tables_study(tmp_path, write=["notes.txt"])))
    assert result.returncode == ExitCode.COMPARISON, result.stderr
    assert "nothing was compared" in result.stderr and "notes.txt" in result.stderr
    _, comparison = compared(result)
    assert comparison["measures"] == [] and comparison["passed"] is False
    assert [s["file"] for s in comparison["skipped"]] == ["notes.txt"]
