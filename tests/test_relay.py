"""The relay over a real Unix socket: routing by the FeatureCloud rules, and who may do what."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedsim.relay.client import KEEPALIVE_EXPIRY, RelayClient
from fedsim.relay.limits import RelayLimits
from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer
from fedsim.relay.state import RelayState

SITES = ("hub", "clinic", "lab")
TOKENS = {"hub": "token-hub-1", "clinic": "token-clinic-2", "lab": "token-lab-3"}


_open_clients: list[RelayClient] = []


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[RelayState, Path]]:
    state = RelayState(Routing(SITES, "hub"), dict(TOKENS))
    socket_path = tmp_path / "relay.sock"
    with RelayServer(state, socket_path):
        yield state, socket_path
        while _open_clients:
            _open_clients.pop().close()


def raw_client(socket_path: Path, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket_path)),
        base_url="http://relay",
        headers=headers,
    )


def client(socket_path: Path, site: str) -> RelayClient:
    _open_clients.append(RelayClient(str(socket_path), site, TOKENS[site]))
    return _open_clients[-1]


class Bomb:
    """Unpickling this would run code: the relay must pass it on without looking inside."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/fedsim-relay-unpickled",))


def test_participant_to_coordinator_and_broadcast(relay) -> None:
    _, sock = relay
    payload = pickle.dumps(Bomb())
    assert client(sock, "clinic").send(payload, None, "GATHERROUND1") == ["hub"]
    got = client(sock, "hub").receive(wait=2)
    assert got is not None
    assert (got.sender, got.memo, got.payload) == ("clinic", "GATHERROUND1", payload)
    assert not Path("/tmp/fedsim-relay-unpickled").exists()
    assert client(sock, "hub").send(b"means", None, "None") == ["clinic", "lab"]
    for site in ("clinic", "lab"):
        got = client(sock, site).receive(wait=2)
        assert got is not None and (got.sender, got.payload, got.memo) == ("hub", b"means", "None")
    assert client(sock, "hub").receive(wait=0) is None  # the broadcast skips the sender


def test_explicit_destination_and_memo_with_odd_characters(relay) -> None:
    _, sock = relay
    memo = "round 2/ä&x=1"
    assert client(sock, "lab").send(b"p2p", "clinic", memo) == ["clinic"]
    got = client(sock, "clinic").receive(wait=2)
    assert got is not None and (got.sender, got.memo) == ("lab", memo)
    assert client(sock, "hub").receive(wait=0) is None


def test_traffic_is_counted_per_sender_receiver_and_memo(relay) -> None:
    state, sock = relay
    client(sock, "clinic").send(b"x" * 10, None, "a")
    client(sock, "hub").send(b"y" * 7, None, "b")
    rows = sorted((t.sender, t.receiver, t.memo, t.bytes) for t in state.traffic)
    assert rows == [("clinic", "hub", "a", 10), ("hub", "clinic", "b", 7), ("hub", "lab", "b", 7)]


def test_long_poll_waits_for_a_message(relay) -> None:
    import threading

    _, sock = relay
    timer = threading.Timer(0.3, lambda: client(sock, "clinic").send(b"late", None, "m"))
    timer.start()
    got = client(sock, "hub").receive(wait=5)
    timer.join()
    assert got is not None and got.payload == b"late"


@pytest.mark.parametrize("token", [None, "wrong", "token-hub-1x"])
def test_a_wrong_token_is_refused(relay, token: str | None) -> None:
    state, sock = relay
    with raw_client(sock, token) as http:
        assert http.post("/sites/hub/messages", content=b"x").status_code == 401
        assert http.get("/sites/hub/messages").status_code == 401
        assert http.put("/sites/hub/status", json={}).status_code == 401
    assert state.traffic == []


def test_a_site_cannot_read_another_mailbox(relay) -> None:
    _, sock = relay
    client(sock, "clinic").send(b"for the hub only", None, "m")
    with raw_client(sock, TOKENS["lab"]) as http:
        response = http.get("/sites/hub/messages", params={"wait": 0})
        assert response.status_code == 403
        assert b"for the hub only" not in response.content
    got = client(sock, "hub").receive(wait=1)
    assert got is not None and got.payload == b"for the hub only"


def test_a_site_cannot_send_as_another(relay) -> None:
    state, sock = relay
    with raw_client(sock, TOKENS["lab"]) as http:
        assert http.post("/sites/clinic/messages", content=b"forged").status_code == 403
        assert http.put("/sites/clinic/status", json={"state": "x"}).status_code == 403
    assert state.traffic == [] and "clinic" not in state.statuses
    assert client(sock, "hub").receive(wait=0) is None


def test_an_unknown_destination_is_a_clear_error(relay) -> None:
    _, sock = relay
    with raw_client(sock, TOKENS["hub"]) as http:
        response = http.post("/sites/hub/messages", params={"destination": "nobody"}, content=b"x")
    assert response.status_code == 400
    assert "nobody" in response.json()["error"]


def test_the_orchestrator_sees_how_many_messages_wait_for_each_site(
    relay: tuple[RelayState, Path],
) -> None:
    state, socket_path = relay
    before = state.last_activity()
    with (
        RelayClient(str(socket_path), "hub", TOKENS["hub"]) as hub,
        RelayClient(str(socket_path), "clinic", TOKENS["clinic"]) as clinic,
    ):
        hub.send(b"to all", None, "m1")  # a broadcast: one for clinic, one for lab
        clinic.send(b"to hub", None, "m2")
        assert state.waiting() == {"clinic": 1, "lab": 1, "hub": 1}
        assert state.last_activity() >= before
        assert clinic.receive(wait=1) is not None
        assert state.waiting() == {"clinic": 0, "lab": 1, "hub": 1}


def test_a_message_not_acknowledged_is_handed_out_again_with_the_same_id(tmp_path: Path) -> None:
    """Its first answer may have been lost with a connection: after ``ack_timeout`` the next
    poll gets it again, same id, and the traffic says it was handed out twice; once
    acknowledged it is never handed out again."""
    state = RelayState(Routing(SITES, "hub"), dict(TOKENS), limits=RelayLimits(ack_timeout=0.5))
    sock = tmp_path / "relay.sock"
    with RelayServer(state, sock):
        with RelayClient(str(sock), "clinic", TOKENS["clinic"]) as clinic:
            clinic.send(b"sum", None, "R1")
        with RelayClient(str(sock), "hub", TOKENS["hub"]) as hub:
            first = hub.receive(wait=2)
            assert first is not None and first.id is not None
            assert hub.receive(wait=0.2) is None  # not yet overdue
            time.sleep(0.6)
            again = hub.receive(wait=2)
            assert again is not None and (again.id, again.payload) == (first.id, b"sum")
            hub.ack(again)
            time.sleep(0.6)
            assert hub.receive(wait=0.3) is None
    (record,) = state.snapshot()[0]
    assert record.handed_out == 2 and record.read is not None


def test_a_site_cannot_acknowledge_another_sites_message(relay) -> None:
    state, sock = relay
    client(sock, "clinic").send(b"x", None, "R1")
    message = client(sock, "hub").receive(wait=2)
    assert message is not None
    client(sock, "lab").ack(message)  # not lab's: ignored
    assert state.snapshot()[0][0].read is None
    client(sock, "hub").ack(message)
    assert state.snapshot()[0][0].read is not None


def test_a_long_poll_pending_when_the_relay_stops_answers_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle agent polls for 10 s at a time: the relay stopping must answer that poll, not
    leave it for the server's graceful shutdown to cancel with an error and a traceback."""
    import threading

    state = RelayState(Routing(SITES, "hub"), dict(TOKENS))
    sock = tmp_path / "relay.sock"
    answered: list[float] = []
    server = RelayServer(state, sock)
    server.start()
    with RelayClient(str(sock), "clinic", TOKENS["clinic"]) as clinic:

        def poll() -> None:
            assert clinic.receive(wait=20) is None
            answered.append(time.monotonic())

        poller = threading.Thread(target=poll)
        poller.start()
        mailbox, deadline = state.mailbox("clinic"), time.monotonic() + 30
        while not mailbox._getters and time.monotonic() < deadline:  # asyncio has no public count
            time.sleep(0.02)  # until the poll waits at the relay
        assert mailbox._getters, "the poll never reached the relay"
        stopped = time.monotonic()
        with caplog.at_level("ERROR"):
            server.stop()
        poller.join(timeout=10)
    assert answered and answered[0] - stopped < 1.0, answered
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_an_agent_keeps_no_idle_connection_to_the_relay_socket(relay) -> None:
    """A request sent on a kept-alive connection just as the relay closes it (idle for the
    relay's keep-alive timeout) fails with "Server disconnected": seen at 100 sites, where a
    participant is idle about 5 s between its data and its last status, and at 500, where a
    busy agent took longer than any margin to send its next request. On the relay's socket
    each request has a connection of its own, and every one is answered."""
    _, sock = relay
    hub = client(sock, "hub")
    pool = hub._client._transport._pool  # type: ignore[attr-defined]  # httpcore's pool
    for pause in (0.0, 1.0):
        hub.report_status({"state": "running"})
        assert not pool.connections, "a connection to the relay was kept open"
        time.sleep(pause)
    assert RelayLimits().keep_alive_timeout / 2 >= KEEPALIVE_EXPIRY  # TLS relays keep theirs
