"""The main job: the bundled mean example, end to end, checked against the pooled data."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, fedsim, run_dir_of

pytestmark = pytest.mark.usefixtures("site_start")  # both start-ups of local sites

EXAMPLE = ROOT / "examples" / "mean"
TOLERANCE = 1e-12  # relative; sums of a few hundred floats in another order


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    workdir = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, workdir / "mean")
    config = workdir / "mean" / "fedsim.toml"
    text = config.read_text().replace('"../../apps/mean"', f'"{ROOT / "apps" / "mean"}"')
    config.write_text(text)
    result = fedsim("run", str(config), cwd=config.parent)
    return run_dir_of(result), result


def test_each_site_gets_the_pooled_column_means(example_run) -> None:
    run_dir, result = example_run
    assert result.returncode == 0, result.stderr
    pooled = pd.concat(pd.read_csv(p) for p in sorted(EXAMPLE.glob("data/*/data.csv")))
    expected = pooled.select_dtypes("number").mean()
    for site in ("site-a", "site-b", "site-c"):
        means = pd.read_csv(run_dir / "sites" / site / "output" / "means.csv")
        got = means.set_index("column")["mean"]
        assert list(got.index) == list(expected.index)
        for column in expected.index:
            assert got[column] == pytest.approx(expected[column], rel=TOLERANCE)


def test_run_directory_is_a_complete_record(example_run) -> None:
    run_dir, result = example_run
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert {s["status"] for s in summary["sites"].values()} == {"finished"}
    assert summary["sites"]["site-a"]["coordinator"] is True
    # two participants send their sums to the coordinator, which broadcasts to both
    traffic = pd.read_csv(run_dir / "traffic.csv")
    assert list(traffic.columns) == [
        "time",
        "sender",
        "receiver",
        "memo",
        "bytes",
        "kind",
        "step",
        "delivered",
        "read",
        "handed_out",
        "fault",
    ]
    assert (traffic.handed_out == 1).all()  # each handed out once, acknowledged at once
    # every message was delivered and read, in that order, no earlier than it was sent
    assert (traffic.time <= traffic.delivered).all() and (traffic.delivered <= traffic.read).all()
    assert set(traffic.kind) == {"app"} and set(traffic.step) == {1}
    # the summary's running totals agree with the record of every message
    assert summary["messages"] == len(traffic) and summary["bytes"] == traffic.bytes.sum()
    for name, site in summary["sites"].items():
        sent, received = traffic[traffic.sender == name], traffic[traffic.receiver == name]
        assert (site["messages_sent"], site["bytes_sent"]) == (len(sent), sent.bytes.sum())
        assert (site["messages_received"], site["bytes_received"]) == (
            len(received),
            received.bytes.sum(),
        )
    pairs = sorted(zip(traffic.sender, traffic.receiver, strict=True))
    assert pairs == [
        ("site-a", "site-b"),
        ("site-a", "site-c"),
        ("site-b", "site-a"),
        ("site-c", "site-a"),
    ]
    assert summary["sites"]["site-b"]["bytes_sent"] == int(
        traffic[traffic.sender == "site-b"].bytes.sum()
    )
    assert summary["bytes"] == int(traffic.bytes.sum())
    for site in ("site-a", "site-b", "site-c"):
        with zipfile.ZipFile(run_dir / "sites" / site / "results.zip") as archive:
            assert archive.namelist() == ["means.csv"]
        assert "the app finished" in (run_dir / "sites" / site / "site.log").read_text()
    assert "app" in (run_dir / "config.toml").read_text()


def test_merged_log_is_time_ordered_and_tagged_by_site(example_run) -> None:
    run_dir, _ = example_run
    lines = (run_dir / "fedsim.log").read_text().splitlines()
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps)
    sources = {line.split()[1] for line in lines}
    assert {"orchestrator", "site-a", "site-b", "site-c"} <= sources
    components = {line.split()[2] for line in lines}
    assert {"run", "relay", "agent", "app"} <= components
    # each app's own output is there, tagged with its site
    assert any("site-c" in line.split()[1] and "40 rows" in line for line in lines)


def test_status_and_logs_read_the_run(example_run) -> None:
    run_dir, _ = example_run
    status = fedsim("status", str(run_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "finished"
    table = fedsim("status", str(run_dir))
    assert "finished" in table.stdout and "site-b" in table.stdout
    logs = fedsim("logs", str(run_dir), "--site", "site-b")
    assert logs.returncode == 0
    sites = {line.split()[1] for line in logs.stdout.splitlines()}
    assert sites == {"site-b"}
    newest = fedsim("status", "--runs", str(run_dir.parent), "--json")
    assert json.loads(newest.stdout)["run_id"] == run_dir.name
