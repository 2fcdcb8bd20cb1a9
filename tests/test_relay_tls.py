"""The relay over TCP with TLS, on 127.0.0.1 only: the run's own CA, the agent pinning it,
and the same token rules and limits as on the Unix socket."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from fedsim.agent.launch import AgentLaunch
from fedsim.relay.client import RelayClient, pinned_context
from fedsim.relay.limits import RelayLimits
from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer, TlsListen
from fedsim.relay.state import RelayState
from fedsim.relay.tls import RunCA

SITES = ("hub", "clinic", "lab")
TOKENS = {"hub": "token-hub-1", "clinic": "token-clinic-2", "lab": "token-lab-3"}
LIMITS = RelayLimits(head_timeout=1.0)
LOOPBACK = "127.0.0.1"


def private_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    return folder


@dataclass
class TlsRelay:
    state: RelayState
    server: RelayServer
    ca: RunCA
    socket_path: Path

    def client(self, site: str, ca_pem: str | None = None) -> RelayClient:
        assert self.server.url is not None
        return RelayClient(self.server.url, site, TOKENS[site], ca_pem or self.ca.cert_pem)


@pytest.fixture
def relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[TlsRelay]:
    caplog.set_level(logging.DEBUG)
    private = private_folder(tmp_path, "private")
    ca = RunCA.create(private, "test-run", valid_for=dt.timedelta(hours=1))
    cert = ca.issue_server(private, hosts=(LOOPBACK,))
    state = RelayState(Routing(SITES, "hub"), dict(TOKENS), limits=LIMITS)
    socket_path = private / "relay.sock"
    tls = TlsListen(LOOPBACK, 0, cert.cert_file, cert.key_file)
    with RelayServer(state, socket_path, tls=tls) as server:
        yield TlsRelay(state, server, ca, socket_path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_an_agent_sends_and_receives_over_tls(relay: TlsRelay) -> None:
    assert relay.server.port and relay.server.url == f"https://{LOOPBACK}:{relay.server.port}"
    launch = AgentLaunch(
        site="clinic",
        clients=SITES,
        coordinator="hub",
        relay_url=relay.server.url,
        relay_ca=relay.ca.cert_pem,
    )
    launch = AgentLaunch.from_json(launch.to_json())  # as it reaches a remote agent
    assert launch.relay_address().port == relay.server.port
    with (
        RelayClient(launch.relay_url, "clinic", TOKENS["clinic"], launch.relay_ca) as clinic,
        relay.client("hub") as hub,
    ):
        assert clinic.send(b"\x00over tls", None, "ROUND1") == ["hub"]
        got = hub.receive(wait=2)
        assert got is not None
        assert (got.sender, got.memo, got.payload) == ("clinic", "ROUND1", b"\x00over tls")
        hub.report_status({"state": "running"})


def test_tcp_and_unix_sites_share_one_relay(relay: TlsRelay) -> None:
    with (
        relay.client("clinic") as remote,
        RelayClient(str(relay.socket_path), "hub", TOKENS["hub"]) as local,
    ):
        remote.send(b"from afar", "hub", None)
        got = local.receive(wait=2)
        assert got is not None and got.payload == b"from afar"
        local.send(b"back", "clinic", None)
        got = remote.receive(wait=2)
        assert got is not None and (got.sender, got.payload) == ("hub", b"back")


def test_a_client_pinning_another_ca_is_refused(relay: TlsRelay, tmp_path: Path) -> None:
    other = RunCA.create(private_folder(tmp_path, "other"), "other", dt.timedelta(hours=1))
    with (
        relay.client("clinic", ca_pem=other.cert_pem) as stranger,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        stranger.send(b"x", None, None)
    assert relay.state.snapshot()[0] == []  # nothing got through
    with relay.client("clinic") as clinic:  # the relay still serves its own
        assert clinic.send(b"ok", None, None) == ["hub"]


def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    private = private_folder(tmp_path, "private")
    ca = RunCA.create(private, "run", dt.timedelta(hours=1))
    cert = ca.issue_server(private, hosts=("relay.example",))
    state = RelayState(Routing(SITES, "hub"), dict(TOKENS))
    tls = TlsListen(LOOPBACK, 0, cert.cert_file, cert.key_file)
    with RelayServer(state, tls=tls) as server:
        assert server.url is not None and server.socket_path is None
        with (
            RelayClient(server.url, "clinic", TOKENS["clinic"], ca.cert_pem) as clinic,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            clinic.send(b"x", None, None)


def raw_client(relay: TlsRelay, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=relay.server.url or "",
        verify=pinned_context(relay.ca.cert_pem),
        headers=headers,
        trust_env=False,
    )


def test_the_token_rules_hold_over_tcp(relay: TlsRelay) -> None:
    with raw_client(relay, TOKENS["lab"]) as lab:
        assert lab.post("/sites/clinic/messages", content=b"forged").status_code == 403
        assert lab.get("/sites/clinic/messages", params={"wait": 0}).status_code == 403
        assert lab.put("/sites/clinic/status", json={"state": "x"}).status_code == 403
    for token in (None, "not-a-token"):
        with raw_client(relay, token) as anyone:
            assert anyone.post("/sites/hub/messages", content=b"x").status_code == 401


def test_plain_http_to_the_tls_port_gets_nowhere(relay: TlsRelay) -> None:
    with (
        httpx.Client(base_url=f"http://{LOOPBACK}:{relay.server.port}", trust_env=False) as plain,
        pytest.raises(httpx.HTTPError),
    ):
        plain.post("/sites/hub/messages", content=b"x", headers={"Authorization": "Bearer t"})


def test_a_late_request_head_is_dropped_over_tls(relay: TlsRelay) -> None:
    context = pinned_context(relay.ca.cert_pem)
    with (
        socket.create_connection((LOOPBACK, relay.server.port or 0), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK) as conn,
    ):
        conn.sendall(b"POST /sites/hub/mess")
        started = time.monotonic()
        assert conn.recv(1024) == b""
        assert time.monotonic() - started < LIMITS.head_timeout + 2


def test_a_handshake_that_never_comes_is_dropped(relay: TlsRelay) -> None:
    with socket.create_connection((LOOPBACK, relay.server.port or 0), timeout=10) as conn:
        started = time.monotonic()
        assert conn.recv(1024) == b""
        assert time.monotonic() - started < LIMITS.head_timeout + 2
    with relay.client("clinic") as clinic:
        assert clinic.send(b"still here", None, None) == ["hub"]


def test_keys_are_private_and_stay_in_a_private_folder(tmp_path: Path) -> None:
    private = private_folder(tmp_path, "private")
    ca = RunCA.create(private, "run", dt.timedelta(hours=1))
    cert = ca.issue_server(private, hosts=("localhost", "::1"))
    for key in (ca.key_file, cert.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "PRIVATE KEY" in key.read_text()
    assert "PRIVATE" not in ca.cert_pem and "PRIVATE" not in cert.cert_file.read_text()
    shared = tmp_path / "run-dir"
    shared.mkdir(mode=0o755)
    with pytest.raises(ValueError, match="not a private folder"):
        RunCA.create(shared, "run", dt.timedelta(hours=1))
    assert list(shared.iterdir()) == []


def test_the_ca_lasts_the_run_and_a_margin(tmp_path: Path) -> None:
    ca = RunCA.create(private_folder(tmp_path, "p"), "run", dt.timedelta(hours=2))
    left = ca.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=25) < left <= dt.timedelta(hours=26)


def test_the_ca_in_the_launch_description_round_trips_through_json(tmp_path: Path) -> None:
    ca = RunCA.create(private_folder(tmp_path, "p"), "run", dt.timedelta(hours=1))
    launch = AgentLaunch(
        site="a",
        clients=("a",),
        coordinator="a",
        relay_url="https://[::1]:8443",
        relay_ca=ca.cert_pem,
    )
    text = launch.to_json()
    assert json.loads(text)["relay_ca"] == ca.cert_pem
    back = AgentLaunch.from_json(text)
    assert back == launch
    address = back.relay_address()
    assert (address.host, address.port, address.base_url) == ("::1", 8443, "https://[::1]:8443")
    ssl.create_default_context(cadata=back.relay_ca)  # still a certificate ssl accepts


@pytest.mark.parametrize(
    ("url", "ca", "message"),
    [
        ("http://127.0.0.1:8080", "PEM", "plain http:// over TCP is not allowed"),
        ("https://127.0.0.1:8443", None, "needs the run's CA"),
        ("https://127.0.0.1", "PEM", "want https://HOST:PORT"),
        ("https://user@127.0.0.1:1/x", "PEM", "want https://HOST:PORT"),
        ("https+unix:///run/fedsim/relay.sock", None, "needs the run's CA"),
        ("https+unix://host/run/x.sock", "PEM", "want https\\+unix:///PATH"),
    ],
)
def test_a_relay_url_without_tls_or_pinning_is_refused(
    url: str, ca: str | None, message: str
) -> None:
    launch = AgentLaunch(site="a", clients=("a",), coordinator="a", relay_url=url, relay_ca=ca)
    with pytest.raises(ValueError, match=message):
        launch.relay_address()
    if ca is None or "http://" in url:
        with pytest.raises(ValueError, match=r"plain http|needs the run's CA"):
            RelayClient(url, "a", "token", ca_pem=None)


def test_tls_through_a_socket_keeps_tls_where_a_sandbox_binds_it() -> None:
    """An SSH site's agent: TLS through the socket at the end of the forward, checked against
    the name ``relay`` in the certificate; moving the socket keeps the TLS."""
    launch = AgentLaunch(
        site="a",
        clients=("a",),
        coordinator="a",
        relay_url="https+unix:///somewhere/relay-1.sock",
        relay_ca="PEM",
    )
    moved = launch.at_socket("/run/fedsim/relay.sock")
    address = moved.relay_address()
    assert moved.relay_url == "https+unix:///run/fedsim/relay.sock"
    assert (address.socket_path, address.tls, address.base_url) == (
        "/run/fedsim/relay.sock",
        True,
        "https://relay",
    )
    plain = replace(launch, relay_url="unix:///x.sock", relay_ca=None).at_socket("/y.sock")
    assert plain.relay_url == "unix:///y.sock"
