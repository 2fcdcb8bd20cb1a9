"""What an agent is told when it starts: a description that can travel to any site.

The orchestrator writes it, the site's placement carries it (a file in a local sandbox; a
remote site would receive it over its connection) and the agent reads it. It names no path
of the orchestrator's machine (app folder, app environment, run directory, relay socket on
the host): those belong to the placement, which puts things where the agent expects them.
Secrets are not in it either: the token reaches the agent on its own, through a file only
the agent's sandbox holds. Standard library only: the agent imports this.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

DEFAULT_RELAY_URL = "unix:///run/fedsim/relay.sock"
"""Where an agent finds the relay inside its sandbox, unless its placement says otherwise."""


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

    def relay_socket(self) -> str:
        """The Unix socket of a ``unix://`` relay URL (the only kind this agent speaks yet)."""
        parts = urlsplit(self.relay_url)
        if parts.scheme != "unix" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"unsupported relay URL {self.relay_url!r} (want unix:///PATH)")
        return parts.path
