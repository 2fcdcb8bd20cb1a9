"""Bad clients against a real relay on a real Unix socket, in hand-written HTTP/1.1 bytes.

Each test does something a broken or hostile client might, checks the relay's answer, then
checks that the relay still serves a good client and that nothing was logged at ERROR
(a traceback on the console is how a client's fault used to look).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.relay.client import RelayClient, RelayRefused
from fedsim.relay.limits import MiB, RelayLimits
from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer
from fedsim.relay.state import RelayState

pytestmark = pytest.mark.timeout(60)

SITES = ("hub", "clinic", "lab")
TOKENS = {"hub": "token-hub-1", "clinic": "token-clinic-2", "lab": "token-lab-3"}
LIMITS = RelayLimits(max_message_bytes=1 * MiB, head_timeout=1.0, body_idle_timeout=1.0)


@pytest.fixture
def relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[RelayState, Path]]:
    caplog.set_level(logging.DEBUG)
    state = RelayState(Routing(SITES, "hub"), dict(TOKENS), limits=LIMITS)
    socket_path = tmp_path / "relay.sock"
    with RelayServer(state, socket_path):
        yield state, socket_path
        still_serves(socket_path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def still_serves(socket_path: Path) -> None:
    with (
        RelayClient(str(socket_path), "clinic", TOKENS["clinic"]) as clinic,
        RelayClient(str(socket_path), "hub", TOKENS["hub"]) as hub,
    ):
        while hub.receive(wait=0) is not None:
            pass  # what the test itself delivered
        assert clinic.send(b"still here", None, "check") == ["hub"]
        got = hub.receive(wait=2)
    assert got is not None and got.payload == b"still here"


def connect(socket_path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(socket_path))
    return sock


def head(method: str, target: str, site: str | None = "clinic", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: relay", "Connection: close"]
    if site is not None:
        lines.append(f"Authorization: Bearer {TOKENS[site]}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body, reading until the relay closes (every request here says close)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # the relay closed with our unread body in its buffer
        pass
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), data[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def exchange(socket_path: Path, request: bytes) -> tuple[int, bytes]:
    with connect(socket_path) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # may be refused before we are done; the answer waits
        return read_response(sock)


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def post(target: str, body: bytes = b"x", site: str = "clinic") -> bytes:
    return head("POST", target, site, Content_Length=str(len(body))) + body


# --- size -------------------------------------------------------------------------------


def test_a_declared_oversize_body_is_refused_before_it_is_read(relay) -> None:
    state, sock = relay
    request = head("POST", "/sites/clinic/messages", Content_Length=str(500 * MiB))
    started = time.monotonic()
    status, body = exchange(sock, request + b"x" * 65536)  # the rest never comes
    assert status == 413 and "500 MiB" in error_of(body) and "1 MiB" in error_of(body)
    assert time.monotonic() - started < 2
    assert state.traffic == [] and state.violations_snapshot()[0][0] == "clinic"


def test_a_chunked_oversize_body_is_cut_off(relay) -> None:
    state, sock = relay
    chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"  # 64 KiB per chunk
    with connect(sock) as conn:
        conn.sendall(head("POST", "/sites/clinic/messages", Transfer_Encoding="chunked"))
        try:
            for _ in range(64):  # 4 MiB offered, 1 MiB allowed
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = read_response(conn)
    assert status == 413 and "1 MiB" in error_of(body)
    assert state.traffic == []


def test_the_agent_gets_the_size_limit_in_words(relay) -> None:
    _, sock = relay
    with (
        RelayClient(str(sock), "clinic", TOKENS["clinic"]) as clinic,
        pytest.raises(RelayRefused) as info,
    ):
        clinic.send(b"z" * (3 * MiB), None, "big")
    assert info.value.status_code == 413 and "1 MiB" in str(info.value)


def test_a_body_longer_than_declared_is_a_bad_request(relay) -> None:
    state, sock = relay
    status, _ = exchange(sock, post("/sites/clinic/messages", b"0123456789") + b"garbage" * 999)
    assert status in (202, 400)  # the declared part is one message; the rest is no request
    assert [t.bytes for t in state.traffic] in ([], [10])


def test_a_stalled_body_times_out(relay) -> None:
    _, sock = relay
    with connect(sock) as conn:
        conn.sendall(head("POST", "/sites/clinic/messages", Content_Length="1000") + b"a" * 100)
        started = time.monotonic()
        status, body = read_response(conn)
    assert status == 408 and "stalled" in error_of(body)
    assert time.monotonic() - started < 4


def test_a_client_that_leaves_mid_body_costs_nothing(relay, caplog) -> None:
    state, sock = relay
    with connect(sock) as conn:
        conn.sendall(head("POST", "/sites/clinic/messages", Content_Length="100000") + b"a" * 999)
    time.sleep(0.3)
    assert state.traffic == []
    assert any("disconnected" in r.getMessage() for r in caplog.records)


# --- content ----------------------------------------------------------------------------


@pytest.mark.parametrize("memo", ["a%0Ab", "a%00b", "%1B%5B31mred", "m" * 1025])
def test_a_bad_memo_is_refused_with_one_warning(relay, caplog, memo: str) -> None:
    state, sock = relay
    caplog.clear()
    status, body = exchange(sock, post(f"/sites/clinic/messages?memo={memo}"))
    assert status == 400 and "memo" in error_of(body)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "clinic" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage() and "\x1b" not in warnings[0].getMessage()
    assert state.traffic == [] and [s for s, _ in state.violations_snapshot()] == ["clinic"]


def test_an_unknown_kind_is_refused(relay) -> None:
    _, sock = relay
    status, body = exchange(sock, post("/sites/clinic/messages?kind=exec"))
    assert status == 400 and "kind" in error_of(body)


def test_a_forged_smpc_partial_is_refused_naming_its_sender(relay) -> None:
    state, sock = relay
    target = "/sites/lab/messages?kind=smpc-partial&destination=clinic&memo=r1"
    status, body = exchange(sock, post(target, site="lab"))
    assert status == 400 and "lab" in error_of(body) and "coordinator" in error_of(body)
    assert state.violations_snapshot()[0][0] == "lab"
    status, _ = exchange(sock, post("/sites/hub/messages?kind=smpc-partial", site="hub"))
    assert status == 400  # the coordinator's broadcast is no partial sum either
    assert state.traffic == []


def test_acting_as_another_site_is_forbidden_and_recorded(relay) -> None:
    state, sock = relay
    status, _ = exchange(sock, post("/sites/hub/messages", site="lab"))
    assert status == 403
    assert state.violations_snapshot()[0][0] == "lab" and state.traffic == []


def test_a_missing_token_is_refused_and_blames_nobody(relay) -> None:
    state, sock = relay
    request = head("POST", "/sites/hub/messages", site=None, Content_Length="1") + b"x"
    assert exchange(sock, request)[0] == 401
    assert state.violations_snapshot() == [] and state.traffic == []


def status_request(body: bytes, site: str = "clinic") -> bytes:
    return head("PUT", f"/sites/{site}/status", site, Content_Length=str(len(body))) + body


def test_a_huge_status_line_is_refused_at_once(relay) -> None:
    state, sock = relay
    huge = json.dumps({"state": "running", "message": "m" * (20 * MiB)}).encode()
    started = time.monotonic()
    status, body = exchange(sock, status_request(huge))
    assert status == 413 and "64 KiB" in error_of(body)
    assert time.monotonic() - started < 2
    assert "clinic" not in state.statuses
    assert state.violations_snapshot()[0][0] == "clinic"


def test_a_long_status_message_is_cut_for_the_console(relay) -> None:
    state, sock = relay
    report = json.dumps({"state": "running", "message": "m\n" * 20000, "progress": 0.5})
    assert exchange(sock, status_request(report.encode()))[0] == 204
    assert state.statuses["clinic"]["message"] == "m " * 500
    assert state.violations_snapshot() == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"progress": Infinity}',
        b'{"progress": 1e999}',
        b'{"progress": NaN}',
        b'{"progress": 7}',
        b'{"state": {"x": 1}}',
        b'{"finished": "yes"}',
        b'{"lines": []}',
        b"\xff\xfe",
    ],
)
def test_a_bad_status_report_is_refused_and_recorded(relay, body: bytes) -> None:
    state, sock = relay
    status, answer = exchange(sock, status_request(body))
    assert status == 400 and "status" in error_of(answer)
    assert "clinic" not in state.statuses
    assert [s for s, _ in state.violations_snapshot()] == ["clinic"]


def test_a_bad_memory_report_is_refused(relay) -> None:
    state, sock = relay
    body = b'{"app_peak_rss_bytes": -5}'
    request = head("PUT", "/sites/clinic/memory", Content_Length=str(len(body))) + body
    assert exchange(sock, request)[0] == 400
    assert state.memory_report("clinic") == {}


@pytest.mark.parametrize("wait", ["abc", "nan", "inf", "-inf", "1e999"])
def test_a_bad_wait_is_refused(relay, wait: str) -> None:
    _, sock = relay
    status, body = exchange(sock, head("GET", f"/sites/clinic/messages?wait={wait}"))
    assert status == 400 and "wait" in error_of(body)


def test_wrong_methods_and_paths(relay) -> None:
    _, sock = relay
    assert exchange(sock, head("DELETE", "/sites/clinic/messages"))[0] == 405
    assert exchange(sock, head("GET", "/sites/clinic/status"))[0] == 405
    assert exchange(sock, head("GET", "/admin"))[0] == 404


# --- connections ------------------------------------------------------------------------


def test_huge_headers_are_a_bad_request(relay) -> None:
    _, sock = relay
    status, _ = exchange(sock, head("GET", "/health", X_Padding="p" * (256 * 1024)))
    assert status in (400, 431)


def test_garbage_instead_of_http(relay) -> None:
    _, sock = relay
    assert exchange(sock, b"\x16\x03\x01 hello\r\n\r\n")[0] == 400


def test_a_flood_of_connections_gets_503s_not_a_dead_relay(relay) -> None:
    _, sock = relay
    conns: list[socket.socket] = []
    try:
        for _ in range(200):  # each asks at once, while the earlier ones still hold theirs
            conns.append(connect(sock, timeout=10))
            conns[-1].sendall(head("GET", "/sites/clinic/messages?wait=0.5"))
        answers = [read_response(conn)[0] for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    assert set(answers) <= {204, 503}  # which ones got through depends on timing
    assert answers.count(503) >= 200 - LIMITS.connections(len(SITES))


def test_slow_partial_heads_are_dropped_in_time(relay) -> None:
    _, sock = relay
    conns = [connect(sock, timeout=5) for _ in range(40)]  # more than the concurrency limit
    try:
        for conn in conns:
            conn.sendall(b"GET /sites/clinic/mess")
        started = time.monotonic()
        for conn in conns:
            assert conn.recv(1024) == b""  # closed by the relay, no answer owed
        assert time.monotonic() - started < LIMITS.head_timeout + 2
    finally:
        for conn in conns:
            conn.close()


def test_an_idle_connection_is_dropped_in_time(relay) -> None:
    _, sock = relay
    with connect(sock) as conn:
        started = time.monotonic()
        assert conn.recv(1024) == b""
        assert time.monotonic() - started < LIMITS.head_timeout + 2
