"""The pure parts: where a message goes, and how an app's status reads."""

from __future__ import annotations

import json

import pytest

from fedsim.agent.protocol import parse_status, setup_body
from fedsim.relay.routing import Routing, UnknownDestination

ROUTING = Routing(("a", "b", "c"), "a")


def test_participant_sends_to_the_coordinator() -> None:
    assert ROUTING.receivers("b", None) == ["a"]


def test_coordinator_broadcasts_to_everyone_else() -> None:
    assert ROUTING.receivers("a", None) == ["b", "c"]


def test_explicit_destination_including_oneself() -> None:
    assert ROUTING.receivers("b", "c") == ["c"]
    assert ROUTING.receivers("a", "a") == ["a"]  # coordinator to itself, as with DP
    with pytest.raises(UnknownDestination):
        ROUTING.receivers("a", "z")


def test_status_of_the_current_engine() -> None:
    status = parse_status(
        json.dumps(
            {
                "available": True,
                "finished": False,
                "message": "aggregate",
                "progress": 0.5,
                "state": "running",
                "destination": "b",
                "smpc": None,
                "dp": None,
                "memo": "R1",
            }
        )
    )
    assert status.available and not status.finished
    assert (status.destination, status.memo, status.progress) == ("b", "R1", 0.5)


def test_status_as_a_json_string_inside_json() -> None:
    # the engine keeps queued statuses as JSON strings and bottle sends them as they are
    inner = json.dumps({"available": True, "finished": False, "memo": "GATHERROUND1"})
    assert parse_status(json.dumps(inner)).memo == "GATHERROUND1"
    assert parse_status(inner).available


def test_older_engines_leave_fields_out() -> None:
    status = parse_status(b'{"available": false, "finished": true}')
    assert status.finished and not status.failed
    assert status.memo is None and status.dp is None and status.smpc is None


def test_finished_with_error_is_a_failure() -> None:
    assert parse_status('{"available": false, "finished": true, "state": "error"}').failed


def test_setup_names_the_coordinator_both_ways() -> None:
    body = setup_body("b", False, ["a", "b"], "a")
    assert body == {
        "id": "b",
        "coordinator": False,
        "master": False,
        "clients": ["a", "b"],
        "coordinatorID": "a",
    }
