"""What an agent is told when it starts: a description that can travel to any site.

The orchestrator writes it, the site's placement carries it (a file in a local sandbox; a
remote site would receive it over its connection) and the agent reads it. It names no path
of the orchestrator's machine (app folder, app environment, run directory, relay socket on
the host): those belong to the placement, which puts things where the agent expects them.
Secrets are not in it either: the token reaches the agent on its own, through a file only
the agent's sandbox holds. The relay's address is a URL: ``unix:///PATH`` for a site on
the orchestrator's machine, ``https://HOST:PORT`` for a remote one, and ``https+unix:///PATH``
for a remote site whose agent has only loopback (an SSH site: the socket is the end of an
SSH forward, and TLS runs through it from the agent to the relay); the TLS ones come with
the run's CA certificate (public) in ``relay_ca``, the only authority the agent trusts for
that connection. Standard library only: the agent imports this.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

DEFAULT_RELAY_URL = "unix:///run/fedsim/relay.sock"
"""Where an agent finds the relay inside its sandbox, unless its placement says otherwise."""
RELAY_TLS_NAME = "relay"
"""The name a relay reached through a socket has in its certificate (no host name there)."""


@dataclass(frozen=True)
class RelayAddress:
    """A parsed relay URL: a Unix socket (``socket_path``, with TLS through it when ``tls``)
    or a TLS endpoint (``host``, ``port``)."""

    socket_path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False

    @property
    def base_url(self) -> str:
        """What an HTTP client puts before ``/sites/...``."""
        if self.socket_path is not None:
            return f"{'https' if self.tls else 'http'}://{RELAY_TLS_NAME}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_relay_url(url: str) -> RelayAddress:
    """``unix:///PATH``, ``https+unix:///PATH`` or ``https://HOST:PORT``. Plain ``http://`` is
    refused: over TCP the token and every message would travel in the clear, and anyone on
    the path could act as the relay."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "https+unix"):
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"unsupported relay URL {url!r} (want {parts.scheme}:///PATH)")
        return RelayAddress(socket_path=parts.path, tls=parts.scheme == "https+unix")
    if parts.scheme == "http":
        raise ValueError(
            f"refusing the relay URL {url!r}: plain http:// over TCP is not allowed, "
            "use https://HOST:PORT (TLS, pinned to the run's CA)"
        )
    if parts.scheme == "https":
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            not parts.hostname
            or port is None
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(f"unsupported relay URL {url!r} (want https://HOST:PORT)")
        return RelayAddress(host=parts.hostname, port=port)
    raise ValueError(
        f"unsupported relay URL {url!r} "
        "(want unix:///PATH, https+unix:///PATH or https://HOST:PORT)"
    )


@dataclass(frozen=True)
class AgentLaunch:
    site: str
    clients: tuple[str, ...]
    coordinator: str
    relay_url: str = DEFAULT_RELAY_URL
    poll_interval: float = 0.02
    shorten_waits: bool = False
    seed: int | None = None
    startup_timeout: float = 120.0
    app_url: str = "http://localhost:5000"
    relay_ca: str | None = None
    """PEM of the run's CA, for an ``https://`` relay: public, so it may travel here."""

    @property
    def is_coordinator(self) -> bool:
        return self.site == self.coordinator

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AgentLaunch:
        """Refuses unknown keys: an agent older than its orchestrator says so plainly."""
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys in the launch description: {', '.join(unknown)}")
        data["clients"] = tuple(data.get("clients", ()))
        return cls(**data)

    def relay_address(self) -> RelayAddress:
        """The relay's parsed URL; a TLS relay needs ``relay_ca`` (no system store)."""
        address = parse_relay_url(self.relay_url)
        if (address.tls or address.socket_path is None) and not self.relay_ca:
            raise ValueError(f"the relay {self.relay_url} needs the run's CA (relay_ca)")
        return address

    def relay_socket(self) -> str:
        """The Unix socket of a ``unix://`` or ``https+unix://`` relay URL."""
        address = parse_relay_url(self.relay_url)
        if address.socket_path is None:
            raise ValueError(f"unsupported relay URL {self.relay_url!r} (want unix:///PATH)")
        return address.socket_path

    def at_socket(self, path: str) -> AgentLaunch:
        """The same description with the relay at socket ``path``, TLS kept if it had it:
        where a placement binds the relay's socket into the agent's sandbox."""
        scheme = "https+unix" if parse_relay_url(self.relay_url).tls else "unix"
        return replace(self, relay_url=f"{scheme}://{path}")
