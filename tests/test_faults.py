"""Injected faults, for real: each makes a real run go wrong the way it says, and the run
ends, saying which site, when, and what the others were doing (never a hang)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from fedsim.errors import ExitCode
from fedsim.relay.client import RelayClient
from fedsim.relay.faults import Fault, FaultPlan
from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer
from fedsim.relay.state import RelayState
from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run


def run_with(tmp_path: Path, faults: list[dict], clinic: dict | None = None, **top: object):
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {"hub": {"behave": {"value": 1.0}}, "clinic": {"behave": {"value": 2.0, **(clinic or {})}}},
        faults=faults,
        **top,
    )
    result = fedsim("run", str(config))
    return result, run_dir_of(result)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_crash_at_a_time_fails_the_run_naming_the_site_and_the_others_state(
    tmp_path: Path,
) -> None:
    result, run_dir = run_with(
        tmp_path, [{"site": "clinic", "action": "crash", "at": 1.5}], clinic={"idle": 10}
    )
    assert result.returncode == ExitCode.SITE_FAILED, result.stderr
    flat = " ".join(result.stderr.split())
    assert "site clinic crashed (fault injected: 1.5 s after the step's sites started)" in flat
    assert "the others meanwhile: hub:" in flat
    summary = summary_of(run_dir)
    assert summary["sites"]["clinic"]["status"] == "failed"
    (event,) = summary["faults"]
    assert event["site"] == "clinic" and event["action"] == "crash" and event["step"] == 1
    assert event["fired_after_s"] == pytest.approx(1.5, abs=0.5)
    assert set(event["others"]) == {"hub"}


def test_a_dropped_message_is_recorded_and_the_run_ends_as_stalled(tmp_path: Path) -> None:
    """The clinic's only message never arrives: the hub waits, stall detection ends it, and
    traffic.csv shows the message as dropped, not as lost without a trace."""
    result, run_dir = run_with(
        tmp_path,
        [{"site": "clinic", "action": "drop", "after_messages": 0}],
        stall_timeout=3,
    )
    assert result.returncode == ExitCode.STALLED, result.stderr
    assert "site clinic dropped 1 message (fault injected: after 0 messages)" in result.stderr
    traffic = pd.read_csv(run_dir / "traffic.csv", keep_default_na=False)
    dropped = traffic[traffic.fault == "dropped"]
    assert list(zip(dropped.sender, dropped.receiver, strict=True)) == [("clinic", "hub")]
    assert (dropped.delivered == "").all() and (dropped.read == "").all()
    sites = summary_of(run_dir)["sites"]
    assert sites["clinic"]["messages_sent"] == 1 and sites["hub"]["messages_received"] == 0


def test_a_short_disconnect_is_survived_and_recorded(tmp_path: Path) -> None:
    """The clinic's link is down for 2 s while it thinks: its agent retries, as over a real
    link, and the run gives the right sum."""
    result, run_dir = run_with(
        tmp_path,
        [{"site": "clinic", "action": "disconnect", "at": 0.5, "duration": 2}],
        clinic={"idle": 3},
    )
    assert result.returncode == 0, result.stderr
    sum_file = run_dir / "sites" / "hub" / "output" / "sum.json"
    assert json.loads(sum_file.read_text())["sum"] == 3.0
    (event,) = summary_of(run_dir)["faults"]
    assert event["action"] == "disconnect"
    assert event["trigger"] == "0.5 s after the step's sites started"
    assert "site clinic lost its link for 2 s" in result.stderr


def test_a_hung_site_ends_the_run_by_stall_detection(tmp_path: Path) -> None:
    result, run_dir = run_with(
        tmp_path,
        [{"site": "clinic", "action": "hang", "after_messages": 0}],
        stall_timeout=3,
    )
    assert result.returncode == ExitCode.STALLED, result.stderr
    assert "site clinic hung (fault injected: after 0 messages)" in result.stderr
    assert summary_of(run_dir)["faults"][0]["action"] == "hang"


@pytest.mark.parametrize(
    ("fault", "where", "message"),
    [
        ({"site": "nowhere", "action": "crash", "at": 1}, "faults[0].site", "no site named"),
        ({"site": "hub", "action": "crash"}, "faults[0]", "exactly one trigger"),
        ({"site": "hub", "action": "crash", "at": 1, "memo": "x"}, "faults[0]", "exactly one"),
        ({"site": "hub", "action": "crash", "at": 1, "duration": 3}, "faults[0]", "duration is"),
        ({"site": "hub", "action": "explode", "at": 1}, "faults[0].action", "crash"),
        ({"site": "hub", "action": "crash", "at": 1, "step": 2}, "faults[0].step", "1 step"),
    ],
)
def test_a_bad_fault_is_a_config_error_naming_the_field(
    tmp_path: Path, fault: dict, where: str, message: str
) -> None:
    config = write_run(tmp_path, BEHAVE_APP, {"hub": {}, "clinic": {}}, faults=[fault])
    result = fedsim("validate", str(config))
    assert result.returncode == ExitCode.CONFIG, result.stdout
    flat = " ".join((result.stdout + result.stderr).split())
    assert f"{config}: {where}" in flat and message in flat, flat


def test_a_memo_trigger_fires_on_that_round_only(tmp_path: Path) -> None:
    """At the relay, over its real socket: the clinic's messages of round 1 pass, its first
    message of round 2 and the next are dropped (count 2), round 3 passes again."""
    state = RelayState(Routing(("hub", "clinic"), "hub"), {"hub": "t-hub", "clinic": "t-clinic"})
    state.faults = FaultPlan(
        [Fault("clinic", "drop", memo="ROUND2", count=2)], time.time(), ["hub", "clinic"], dict
    )
    with RelayServer(state, tmp_path / "relay.sock"):
        with RelayClient(str(tmp_path / "relay.sock"), "clinic", "t-clinic") as clinic:
            for memo in ("ROUND1", "ROUND2", "ROUND2", "ROUND3"):
                assert clinic.send(memo.encode(), None, memo) == ["hub"]  # all look accepted
        with RelayClient(str(tmp_path / "relay.sock"), "hub", "t-hub") as hub:
            got = [hub.receive(wait=0.5) for _ in range(3)]
    assert [m.memo if m else None for m in got] == ["ROUND1", "ROUND3", None]
    faults = [(t.memo, t.fault) for t in state.snapshot()[0]]
    assert faults == [
        ("ROUND1", None),
        ("ROUND2", "dropped"),
        ("ROUND2", "dropped"),
        ("ROUND3", None),
    ]
    (event,) = state.faults.report()
    assert event["trigger"] == "its first message with memo 'ROUND2'"
