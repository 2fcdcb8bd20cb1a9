"""The agent's client for its app (``agent/app_client.py``), against a real HTTP/1.0 server on
loopback that answers as a FeatureCloud app's wsgiref server does."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from fedsim.agent.app_client import AppClient, AppRefused, AppUnreachable


class _App(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str | None, bytes]]] = []

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    def _answer(self, body: bytes) -> None:
        self.seen.append((self.command, self.path, self.headers["Host"], body))
        status = 500 if self.path.startswith("/api/broken") else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[int]:
    _App.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_requests_reach_the_app_as_named_and_keep_the_address_that_answered(app: int) -> None:
    client = AppClient(f"http://localhost:{app}", timeout=5)
    assert client.get("/api/status") == b'{"ok": true}'
    client.post("/api/data", params={"client": "hub", "memo": "a%20b"}, content=b"\x00\x01")
    client.post("/api/setup", json_body={"id": "hub"})
    assert _App.seen == [
        ("GET", "/api/status", f"localhost:{app}", b""),
        ("POST", "/api/data?client=hub&memo=a%2520b", f"localhost:{app}", b"\x00\x01"),
        ("POST", "/api/setup", f"localhost:{app}", b'{"id": "hub"}'),
    ]
    assert client._address == "127.0.0.1"  # no name lookup (nor ::1 first) for the next polls


def test_failures_name_the_request(app: int) -> None:
    with pytest.raises(AppRefused, match=r"GET /api/broken: the app answered HTTP 500"):
        AppClient(f"http://127.0.0.1:{app}", timeout=5).get("/api/broken")
    with pytest.raises(AppUnreachable, match=r"GET /api/status: .*refused"):
        AppClient("http://127.0.0.1:1", timeout=5).get("/api/status")
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        AppClient("https://localhost:5000", timeout=5)
