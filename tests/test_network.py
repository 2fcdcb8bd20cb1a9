"""Network profiles on the sites' links, measured where they act: ``traffic.csv`` says when
each message was sent, delivered and read; a profile's latency adds to each hop and its
bandwidth caps each transfer. Real runs of the behave test app (it sums one number per site,
gathered at the coordinator and broadcast back)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run


def transfers(run_dir: Path) -> pd.DataFrame:
    traffic = pd.read_csv(run_dir / "traffic.csv", parse_dates=["time", "delivered", "read"])
    traffic["seconds"] = (traffic.delivered - traffic.time).dt.total_seconds()
    return traffic


def run_sum(tmp_path: Path, clinic: dict, **top: object) -> Path:
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"value": 1.0}}, "clinic": {"behave": {"value": 2.0, **clinic}}},
        **top,
    )
    result = fedsim("run", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    output = run_dir / "sites" / "hub" / "output" / "sum.json"
    assert json.loads(output.read_text())["sum"] == 3.0
    return run_dir


def test_latency_adds_to_each_hop(tmp_path: Path) -> None:
    """100 ms at each site: clinic -> relay -> hub is two hops, 200 ms; without a profile the
    relay hands a message on at once."""
    ideal = transfers(run_sum(tmp_path / "ideal", {}))
    assert (ideal.seconds < 0.05).all(), ideal
    slow = transfers(run_sum(tmp_path / "slow", {}, network={"latency_ms": 100}))
    print(slow[["sender", "receiver", "bytes", "seconds"]])
    assert len(slow) == len(ideal) == 2  # clinic -> hub, then hub's broadcast -> clinic
    for seconds in slow.seconds:
        assert seconds == pytest.approx(0.2, abs=0.03)
    assert (slow.delivered <= slow.read).all()


def test_a_bandwidth_cap_holds_within_10_percent(tmp_path: Path) -> None:
    """The clinic uploads about a megabyte over 8 Mbit/s: about one second, as its link says."""
    run_dir = run_sum(
        tmp_path,
        {"payload_bytes": 1_000_000},
        network={"up_mbit": 8, "down_mbit": 1000},
    )
    traffic = transfers(run_dir)
    big = traffic[traffic.sender == "clinic"].iloc[0]
    expected = big.bytes * 8 / 8e6 + big.bytes * 8 / 1e9
    print(f"{big.bytes} bytes: {big.seconds:.3f} s on the wire, {expected:.3f} s expected")
    assert big.bytes > 1_000_000
    assert big.seconds == pytest.approx(expected, rel=0.10)


def test_named_profiles_and_bad_settings(tmp_path: Path) -> None:
    """A named profile per site runs; an unknown name or an impossible number is a config
    error naming the field, before anything starts."""
    config = write_run(tmp_path / "named", BEHAVE_APP, {"hub": {}, "clinic": {}}, network="wan")
    assert fedsim("run", str(config)).returncode == 0
    for bad, fault in (
        ("moon", 'unknown network profile "moon" (known: "lan", "wan", "hospital-vpn")'),
        ({"latency_ms": -5}, "greater than or equal to 0"),
        ({"loss": 1.0}, "less than 1"),
        ({"profile": "lan", "speed": 3}, "speed"),
    ):
        folder = tmp_path / f"bad-{len(str(bad))}"
        config = write_run(folder, BEHAVE_APP, {"hub": {}, "clinic": {}}, network=bad)
        result = fedsim("validate", str(config))
        assert result.returncode == ExitCode.CONFIG, result.stdout
        flat = " ".join((result.stdout + result.stderr).split())
        assert f"{config}: network" in flat and fault in flat, flat
