"""What the relay holds: one mailbox per site, the sites' reported states, and the traffic."""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedsim.relay.kinds import APP_KIND
from fedsim.relay.limits import RelayLimits
from fedsim.relay.routing import Routing

__all__ = ["APP_KIND", "Message", "RelayState", "SiteTraffic", "TrafficRecord"]


@dataclass(frozen=True)
class Message:
    sender: str
    memo: str | None
    payload: bytes
    kind: str = APP_KIND


@dataclass(frozen=True)
class TrafficRecord:
    time: float
    sender: str
    receiver: str
    memo: str | None
    bytes: int
    kind: str = APP_KIND


@dataclass
class SiteTraffic:
    """One site's running totals, kept as messages pass: the live display reads them many
    times a second, and counting the whole traffic list each time would grow with the run."""

    sent: int = 0
    bytes_sent: int = 0
    received: int = 0
    bytes_received: int = 0

    def count_sent(self, size: int) -> None:
        self.sent += 1
        self.bytes_sent += size

    def count_received(self, size: int) -> None:
        self.received += 1
        self.bytes_received += size


@dataclass
class RelayState:
    """Shared between the relay's event loop (writes) and the orchestrator thread (reads)."""

    routing: Routing
    tokens: dict[str, str]
    traffic: list[TrafficRecord] = field(default_factory=list)
    capture_dir: Path | None = None
    """When set, every delivered payload is also written there, for inspection."""
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: RelayLimits = field(default_factory=RelayLimits)
    violations: list[tuple[str, str]] = field(default_factory=list)
    """(site, what it did) for every request of an authenticated site that the relay refused
    as malformed or forbidden; read it with ``violations_snapshot``."""
    _mailboxes: dict[str, asyncio.Queue[Message]] = field(default_factory=dict)
    _per_site: dict[str, SiteTraffic] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def site_for_token(self, token: str) -> str | None:
        for site, expected in self.tokens.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                return site
        return None

    _last_activity: float = field(default_factory=time.time)

    def mailbox(self, site: str) -> asyncio.Queue[Message]:
        with self._lock:  # created under the lock: waiting() iterates from another thread
            if site not in self._mailboxes:
                self._mailboxes[site] = asyncio.Queue()
            return self._mailboxes[site]

    def waiting(self) -> dict[str, int]:
        """Site -> messages in its mailbox that its agent has not fetched; for the
        orchestrator thread: the lock guards the dict of mailboxes, and a queue's size is a
        single read of its deque's length, which needs no help from the event loop."""
        with self._lock:
            return {site: box.qsize() for site, box in self._mailboxes.items()}

    def last_activity(self) -> float:
        """When a message last moved or a site last reported its state: stall detection."""
        with self._lock:
            return self._last_activity

    def deliver(
        self,
        sender: str,
        destination: str | None,
        memo: str | None,
        payload: bytes,
        kind: str = APP_KIND,
    ) -> list[str]:
        receivers = self.routing.receivers(sender, destination)
        now = time.time()
        for receiver in receivers:
            self.mailbox(receiver).put_nowait(Message(sender, memo, payload, kind))
        with self._lock:
            self._last_activity = now
            for receiver in receivers:
                if self.capture_dir is not None:
                    self._capture(len(self.traffic) + 1, sender, receiver, kind, payload)
                self.traffic.append(TrafficRecord(now, sender, receiver, memo, len(payload), kind))
                self._per_site.setdefault(sender, SiteTraffic()).count_sent(len(payload))
                self._per_site.setdefault(receiver, SiteTraffic()).count_received(len(payload))
        return receivers

    def _capture(self, number: int, sender: str, receiver: str, kind: str, payload: bytes) -> None:
        assert self.capture_dir is not None
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        name = f"{number:06d}-{sender}-to-{receiver}-{kind}.bin"
        (self.capture_dir / name).write_bytes(payload)

    def set_report(self, kind: str, site: str, report: dict[str, Any]) -> None:
        """What an agent tells about its site: ``status`` of the app, or ``memory``."""
        with self._lock:
            target = self.statuses if kind == "status" else self.memory
            target[site] = {**report, "time": time.time()}
            self._last_activity = target[site]["time"]

    def record_violation(self, site: str, message: str) -> None:
        with self._lock:
            self.violations.append((site, message))

    def violations_snapshot(self) -> list[tuple[str, str]]:
        """Every refusal so far, oldest first, as (site, message); safe from any thread.

        The orchestrator fails a site that appears here, naming the message: a site whose
        agent sends malformed reports or forged messages is broken or hostile, and its own
        agent may not say so.
        """
        with self._lock:
            return list(self.violations)

    def snapshot(self) -> tuple[list[TrafficRecord], dict[str, dict[str, Any]]]:
        with self._lock:
            return list(self.traffic), {k: dict(v) for k, v in self.statuses.items()}

    def site_statuses(self) -> dict[str, dict[str, Any]]:
        """The sites' last reported states, without copying the traffic (polled often)."""
        with self._lock:
            return {k: dict(v) for k, v in self.statuses.items()}

    def site_traffic(self) -> dict[str, SiteTraffic]:
        """Site -> its totals so far (copies: safe to read from any thread)."""
        with self._lock:
            return {site: replace(totals) for site, totals in self._per_site.items()}

    def memory_report(self, site: str) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self.memory.get(site, {}).items() if k != "time"}
