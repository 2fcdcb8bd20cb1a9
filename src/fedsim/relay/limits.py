"""How much the relay accepts from one client, so that no client can take a run down.

The defaults are far above what a working agent sends and far below what hurts the
orchestrator: a message may be large (models, matrices), a status report never is.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20
KiB = 2**10

DEFAULT_MAX_MESSAGE_BYTES = 256 * MiB
MAX_REPORT_BYTES = 64 * KiB
"""Status and memory reports are a handful of short fields."""
MAX_MEMO_CHARS = 1024
MAX_STATE_CHARS = 64
MAX_STATUS_MESSAGE_CHARS = 1000
"""A status message is shown on the console: longer text is cut, not refused."""
MAX_HEADER_BYTES = 32 * KiB
"""Request line plus headers; a memo of 1,024 non-ASCII characters, percent-encoded, fits."""


@dataclass(frozen=True)
class RelayLimits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_report_bytes: int = MAX_REPORT_BYTES
    body_idle_timeout: float = 30.0
    """A body that stalls this long between two chunks is dropped (408)."""
    head_timeout: float = 10.0
    """A connection must deliver a complete request line and headers within this time."""
    keep_alive_timeout: int = 5
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int | None = None
    """Concurrent connections before new requests get 503; None: ``connections_for(sites)``."""
    ack_timeout: float = 30.0
    """A message handed to an agent and not acknowledged this long is handed out again (its
    answer may have been lost with a connection): delivered at least once, duplicates
    recognised by the agent from the message's id."""

    def connections(self, sites: int) -> int:
        return self.max_connections if self.max_connections is not None else connections_for(sites)


def connections_for(sites: int) -> int:
    """Each agent keeps three connections (sending, long poll, the inbox's sends): room for
    four per site, and some for the orchestrator and reconnects."""
    return 4 * sites + 16


def human_bytes(size: int) -> str:
    """``268435456`` -> ``256 MiB``: error messages name limits the way people think of them."""
    for unit, factor in (("GiB", 2**30), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"
