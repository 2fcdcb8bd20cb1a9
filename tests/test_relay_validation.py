"""The relay's checks of what clients send, as plain functions (no sockets)."""

from __future__ import annotations

import pytest

from fedsim.agent.protocol import AppStatus
from fedsim.relay.kinds import PARTIAL_KIND, SHARE_KIND
from fedsim.relay.limits import MiB, connections_for, human_bytes
from fedsim.relay.routing import Routing
from fedsim.relay.validation import (
    Refused,
    check_content_length,
    check_kind,
    check_memo,
    check_route,
    clean_memory,
    clean_status,
    parse_json_object,
    parse_wait,
)

ROUTING = Routing(("hub", "clinic", "lab"), "hub")


def refused(call, *args) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def test_memo_limits() -> None:
    assert check_memo(None) is None
    assert check_memo("round 2/ä&x=1") == "round 2/ä&x=1"
    assert check_memo("m" * 1024) == "m" * 1024
    assert "1025" in refused(check_memo, "m" * 1025).message
    for bad in ("a\nb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b"):
        assert "control" in refused(check_memo, bad).message


def test_kinds_and_routes() -> None:
    assert check_kind(SHARE_KIND) == SHARE_KIND
    assert refused(check_kind, "evil\n").status == 400
    assert check_route(ROUTING, "lab", None, "app") == ["hub"]
    assert check_route(ROUTING, "lab", "hub", PARTIAL_KIND) == ["hub"]
    assert check_route(ROUTING, "hub", "hub", PARTIAL_KIND) == ["hub"]  # its own partial sum
    forged = refused(check_route, ROUTING, "lab", "clinic", PARTIAL_KIND).message
    assert "lab" in forged and "coordinator" in forged
    assert refused(check_route, ROUTING, "hub", None, PARTIAL_KIND).status == 400  # a broadcast
    assert "nobody" in refused(check_route, ROUTING, "lab", "nobody", "app").message


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "-inf", "1e999"])
def test_wait_must_be_finite(text: str) -> None:
    assert refused(parse_wait, text).status == 400


def test_wait_is_clamped() -> None:
    assert (parse_wait(None), parse_wait("-3"), parse_wait("2.5"), parse_wait("99")) == (
        0.0,
        0.0,
        2.5,
        30.0,
    )


def test_content_length_is_checked_up_front() -> None:
    assert check_content_length(None, 10) is None
    assert check_content_length("10", 10) == 10
    big = refused(check_content_length, str(500 * MiB), 256 * MiB)
    assert big.status == 413 and "500 MiB" in big.message and "256 MiB" in big.message
    assert refused(check_content_length, "-1", 10).status == 400


def test_human_bytes_and_connections() -> None:
    assert [human_bytes(n) for n in (12, 2048, 1536 * 1024, 2**30)] == [
        "12 bytes",
        "2 KiB",
        "1.5 MiB",
        "1 GiB",
    ]
    assert connections_for(3) == 28


def test_status_is_cleaned() -> None:
    good = {"state": "running", "message": "x" * 5000, "progress": 1, "finished": False}
    cleaned = clean_status(good)
    assert len(cleaned["message"]) == 1000 and cleaned["progress"] == 1.0
    assert cleaned["template"] == "v2"
    assert clean_status({"state": "my_own_state"})["state"] == "my_own_state"
    assert clean_status({"message": "a\nb"})["message"] == "a b"
    assert clean_status(AppStatus(available=False, finished=True).display())["finished"]


@pytest.mark.parametrize(
    "report",
    [
        {"progress": 1.5},
        {"progress": float("inf")},
        {"progress": True},
        {"progress": "50%"},
        {"state": 3},
        {"state": "x" * 65},
        {"state": "run\nning"},
        {"message": ["a"]},
        {"finished": "yes"},
        {"template": "v9"},
        {"extra": 1},
    ],
)
def test_bad_status_is_refused(report: dict) -> None:
    assert refused(clean_status, report).status == 400


def test_strict_json_and_memory() -> None:
    assert refused(parse_json_object, b'{"progress": NaN}', "status").status == 400
    assert refused(parse_json_object, b"[1]", "status").status == 400
    assert refused(parse_json_object, b"[" * 100000, "status").status == 400
    assert clean_memory({"app_peak_rss_bytes": 5}) == {"app_peak_rss_bytes": 5}
    for bad in ({"x": 1}, {"a_bytes": -1}, {"a_bytes": 1.5}, {"a_bytes": True}):
        assert refused(clean_memory, bad).status == 400


def test_the_agent_cuts_the_app_text_to_the_relay_limits() -> None:
    shown = AppStatus(
        available=False, finished=False, state="s" * 100, message="m" * 10**6, progress=float("inf")
    ).display()
    assert len(shown["state"]) == 64 and len(shown["message"]) == 1000
    assert shown["progress"] is None
    assert clean_status(shown)["message"] == "m" * 1000
