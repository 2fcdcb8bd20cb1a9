"""The agent's side of the relay: send as this site, read this site's mailbox."""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from fedsim.agent.launch import parse_relay_url
from fedsim.relay.kinds import (
    APP_KIND,
    KIND_HEADER,
    MEMO_HEADER,
    MESSAGE_ID_HEADER,
    SENDER_HEADER,
)


class RelayRefused(httpx.HTTPStatusError):
    """The relay refused a request and said why (``message``): a message over the size limit,
    a malformed memo or report. An ``httpx.HTTPStatusError``, so whoever fails the site on
    HTTP errors also fails it on this, with the relay's words."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message, request=response.request, response=response)
        self.message = message
        self.status_code = response.status_code


def _checked(response: httpx.Response) -> httpx.Response:
    """The response, or ``RelayRefused`` when the relay explained a 4xx in JSON."""
    if 400 <= response.status_code < 500:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, str):
            raise RelayRefused(f"the relay refused it ({response.status_code}): {error}", response)
    return response.raise_for_status()


BUSY_RETRY_SECONDS = 30.0
"""A relay at its connection limit answers 503: a busy relay is waited for, this long."""


@dataclass(frozen=True)
class Incoming:
    sender: str
    memo: str | None
    payload: bytes
    kind: str = APP_KIND
    id: int | None = None
    """The relay's id for it: acknowledged once it reached the app (``ack``)."""


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """Trusts the run's CA and nothing else (``cadata`` keeps the system store out), checks
    the host name, and speaks TLS 1.3 only: both ends are fedsim."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


@functools.cache
def plain_http_context() -> ssl.SSLContext:
    """For the clients that speak plain HTTP (the app on loopback, the relay on a Unix
    socket). httpx gives every client a TLS context, by default one loaded with the CA
    bundle: about 0.1 s for an agent's first client and 25 ms for each next, most of its
    start-up. This one trusts nothing and costs nothing: TLS through it would fail, never
    trust the system store. One per process: the agent fork-server makes it before it forks,
    and every agent's three clients share it (each context was about 0.2 MiB of an agent's
    own memory)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


KEEPALIVE_EXPIRY = 2.0
"""An idle TLS connection to the relay is dropped by the client after this long, well before
the relay closes it (``RelayLimits.keep_alive_timeout``, 5 s). Equal times (httpx's default is
also 5 s) race: a request sent on a connection the relay is closing at that moment fails
with "Server disconnected" or a reset, which failed a site that had been idle 5 s."""
_TLS_LIMITS = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)
_SOCKET_LIMITS = httpx.Limits(max_keepalive_connections=0)
"""On a Unix socket a connection costs next to nothing, and one per request leaves no idle
connection to race the relay's closing it: under heavy load (500 sites on two cores) an agent
took seconds to send its next request, more than any margin a keep-alive expiry leaves."""


def relay_transport(relay: str, ca_pem: str | None) -> tuple[httpx.HTTPTransport, str]:
    """(transport, base URL) for ``relay``: a Unix socket path, or a relay URL
    (``unix:///PATH``; ``https://HOST:PORT`` or ``https+unix:///PATH`` with ``ca_pem``
    pinned)."""
    if "://" not in relay:
        relay = f"unix://{relay}"
    address = parse_relay_url(relay)
    if address.socket_path is not None and not address.tls:
        transport = httpx.HTTPTransport(
            uds=address.socket_path, verify=plain_http_context(), limits=_SOCKET_LIMITS
        )
        return transport, address.base_url
    if not ca_pem:
        raise ValueError(f"the relay {relay} needs the run's CA certificate to be pinned")
    transport = httpx.HTTPTransport(
        uds=address.socket_path, verify=pinned_context(ca_pem), limits=_TLS_LIMITS
    )
    return transport, address.base_url


class RelayClient:
    """One per thread: httpx clients are not shared between the agent's loops.

    ``relay`` is a Unix socket path or a relay URL; an ``https://`` relay is verified against
    ``ca_pem`` (the run's CA) only."""

    def __init__(self, relay: str, site: str, token: str, ca_pem: str | None = None) -> None:
        self.site = site
        transport, base_url = relay_transport(relay, ca_pem)
        self._client = httpx.Client(
            transport=transport,
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0),
            trust_env=False,  # no proxy from the environment: the relay is reached directly
        )

    def _request(self, method: str, url: str, **options: Any) -> httpx.Response:
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        pause = 0.05
        while True:
            response = self._client.request(method, url, **options)
            if response.status_code != 503 or time.monotonic() + pause > deadline:
                return _checked(response)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def send(
        self, payload: bytes, destination: str | None, memo: str | None, kind: str = APP_KIND
    ) -> list[str]:
        params = {"kind": kind}
        params.update(
            {k: v for k, v in (("destination", destination), ("memo", memo)) if v is not None}
        )
        url = f"/sites/{self.site}/messages"
        response = self._request("POST", url, params=params, content=payload)
        return list(response.json()["receivers"])

    def receive(self, wait: float) -> Incoming | None:
        response = self._request("GET", f"/sites/{self.site}/messages", params={"wait": wait})
        if response.status_code == 204:
            return None
        memo = response.headers.get(MEMO_HEADER)
        ident = response.headers.get(MESSAGE_ID_HEADER)
        return Incoming(
            sender=response.headers[SENDER_HEADER],
            memo=unquote(memo) if memo is not None else None,
            payload=response.content,
            kind=response.headers.get(KIND_HEADER, APP_KIND),
            id=int(ident) if ident is not None and ident.isdigit() else None,
        )

    def ack(self, message: Incoming) -> None:
        """Tell the relay ``message`` arrived; without it, it is handed out again later."""
        if message.id is not None:
            self._request("POST", f"/sites/{self.site}/messages/{message.id}/ack")

    def report_status(self, status: dict[str, Any]) -> None:
        self._request("PUT", f"/sites/{self.site}/status", json=status)

    def report_memory(self, usage: dict[str, int]) -> None:
        self._request("PUT", f"/sites/{self.site}/memory", json=usage)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
