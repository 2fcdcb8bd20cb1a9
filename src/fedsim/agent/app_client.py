"""The agent's HTTP client for its app (``localhost:5000`` inside the site).

The standard library's ``http.client``, one connection per request: FeatureCloud apps serve
with bottle's default server (wsgiref), which answers in HTTP/1.0 and closes every
connection, so a client's pool and keep-alive buy nothing here. An idle agent polls its app
twice a second, and at 500 sites those polls were most of the machine: httpx spent about
0.5 ms of CPU on each, ``http.client`` 0.2 ms (``bench/bench_scale.py``). The address that
first answered is kept, so that a poll does not read ``/etc/hosts`` and try ``::1`` before
``127.0.0.1`` every time; the ``Host`` header stays the one the app was named by.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit

from fedsim.agent.app_dialer import AppDialer


class AppRequestError(Exception):
    """A request to the app failed; the message names it."""


class AppUnreachable(AppRequestError):
    """No answer from the app (not listening yet, or gone)."""


class AppRefused(AppRequestError):
    """The app answered with an HTTP error status."""


class _DialedConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` whose socket the site's dialer makes (``app_dialer.py``)."""

    def __init__(self, dialer: AppDialer, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._dialer = dialer

    def connect(self) -> None:
        self.sock = self._dialer.connect(self.host, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as connect() does


class AppClient:
    """Requests to one app; each call is one connection, closed when it returns. With a
    ``dialer``, the site makes each connection (a forked agent is in no site's network)."""

    def __init__(self, url: str, timeout: float, dialer: AppDialer | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the app's address must be http://HOST:PORT, not {url!r}")
        self._host_header = parts.netloc
        self._name = parts.hostname
        self._port = parts.port or 80
        self._timeout = timeout
        self._dialer = dialer
        self._address: str | None = None

    def get(self, path: str) -> bytes:
        return self.request("GET", path)

    def post(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        json_body: Any = None,
    ) -> bytes:
        if json_body is not None:
            return self.request("POST", path, params, json.dumps(json_body).encode(), "json")
        return self.request("POST", path, params, content or b"", "octet-stream")

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        kind: str | None = None,
    ) -> bytes:
        target = f"{path}?{urlencode(params)}" if params else path
        headers = {"Host": self._host_header}
        if kind is not None:
            headers["Content-Type"] = f"application/{kind}"
        host = self._address or self._name
        connection = (
            http.client.HTTPConnection(host, self._port, timeout=self._timeout)
            if self._dialer is None
            else _DialedConnection(self._dialer, host, self._port, self._timeout)
        )
        try:
            connection.request(method, target, body=body, headers=headers)
            if self._address is None and connection.sock is not None:
                self._address = _peer_host(connection.sock)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AppUnreachable(f"{method} {path}: {exc or type(exc).__name__}") from exc
        finally:
            connection.close()
        if response.status >= 400:
            raise AppRefused(f"{method} {path}: the app answered HTTP {response.status}")
        return data


def _peer_host(sock: socket.socket) -> str | None:
    peer = sock.getpeername()
    return peer[0] if isinstance(peer, tuple) else None
