"""What the relay holds: one mailbox per site, the sites' reported states, and the traffic."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedsim.relay.faults import FaultPlan
from fedsim.relay.kinds import APP_KIND
from fedsim.relay.limits import RelayLimits
from fedsim.relay.network import NetworkModel
from fedsim.relay.routing import Routing

__all__ = ["APP_KIND", "Message", "RelayState", "SiteTraffic", "TrafficRecord"]


@dataclass(frozen=True)
class Message:
    sender: str
    memo: str | None
    payload: bytes
    kind: str = APP_KIND
    record: int | None = None
    """Its row in the traffic, to note when it was read."""


@dataclass(frozen=True)
class TrafficRecord:
    """One message to one receiver: ``time`` it was sent (the relay got the request),
    ``delivered`` into the receiver's mailbox (later than sent under a network profile),
    ``read`` by the receiver's agent (None: never)."""

    time: float
    sender: str
    receiver: str
    memo: str | None
    bytes: int
    kind: str = APP_KIND
    delivered: float | None = None
    read: float | None = None
    """When its receiver's agent acknowledged it (it reached the app)."""
    handed_out: int = 0
    """How often it was handed to the receiver's agent: more than once when an answer was
    lost and it was handed out again after ``ack_timeout``."""
    fault: str | None = None
    """``dropped`` when an injected fault dropped it (``faults.py``)."""


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


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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
    network: NetworkModel | None = None
    """Network conditions on the sites' links (``network.py``); None: ideal links."""
    faults: FaultPlan | None = None
    """Faults injected at sites (``faults.py``); None: none."""
    closing: threading.Event = field(default_factory=threading.Event)
    """Set when the relay stops: requests an injected hang holds are let go then."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on the relay's loop when it stops: every long poll answers at once. One left
    waiting out its ``wait`` (10 s from an idle agent) outlasts the server's graceful
    shutdown, which then cancels it and logs an error with a traceback."""
    violations: list[tuple[str, str]] = field(default_factory=list)
    """(site, what it did) for every request of an authenticated site that the relay refused
    as malformed or forbidden; read it with ``violations_snapshot``."""
    _mailboxes: dict[str, asyncio.Queue[Message]] = field(default_factory=dict)
    _unacked: dict[int, tuple[str, Message, float]] = field(default_factory=dict)
    _per_site: dict[str, SiteTraffic] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _by_digest: dict[bytes, str] = field(init=False)

    _reported: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._reported = threading.Condition(self._lock)
        self._by_digest = {_digest(token): site for site, token in self.tokens.items()}

    def site_for_token(self, token: str) -> str | None:
        """Found by the token's digest, then compared in constant time: every request asks,
        and comparing with each site's token in turn cost a good part of a core at 500 sites.
        A lookup's timing tells about the digest only, never about the token."""
        site = self._by_digest.get(_digest(token))
        if site is None or not hmac.compare_digest(token.encode(), self.tokens[site].encode()):
            return None
        return site

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
        sent: float | None = None,
    ) -> list[str]:
        """Into each receiver's mailbox: at once, or when the receiver's link has brought it
        (under a network profile; then only from the relay's event loop). ``sent``: when the
        sender started sending it, if earlier than now (its upload took time)."""
        receivers = self.routing.receivers(sender, destination)
        now = time.time()
        sent = now if sent is None else sent
        records: list[tuple[str, int, float]] = []
        with self._lock:
            self._last_activity = now
            for receiver in receivers:
                if self.capture_dir is not None:
                    self._capture(len(self.traffic) + 1, sender, receiver, kind, payload)
                ready = now
                if self.network is not None:
                    ready = self.network.download(receiver, len(payload), now)
                records.append((receiver, len(self.traffic), ready))
                self._per_site.setdefault(sender, SiteTraffic()).count_sent(len(payload))
                self._per_site.setdefault(receiver, SiteTraffic()).count_received(len(payload))
                self.traffic.append(
                    TrafficRecord(sent, sender, receiver, memo, len(payload), kind, delivered=ready)
                )
        for receiver, record, ready in records:
            message = Message(sender, memo, payload, kind, record)
            box = self.mailbox(receiver)
            if ready <= now:
                box.put_nowait(message)
            else:  # call_later keeps the order of equal times: a receiver's messages stay in order
                asyncio.get_running_loop().call_later(ready - now, box.put_nowait, message)
        return receivers

    def record_dropped(
        self, sender: str, destination: str | None, memo: str | None, size: int, kind: str
    ) -> list[str]:
        """A message an injected fault dropped: in the traffic, never in a mailbox."""
        receivers = self.routing.receivers(sender, destination)
        now = time.time()
        with self._lock:
            self._last_activity = now
            for receiver in receivers:
                self.traffic.append(
                    TrafficRecord(now, sender, receiver, memo, size, kind, fault="dropped")
                )
                self._per_site.setdefault(sender, SiteTraffic()).count_sent(size)  # not received
        return receivers

    def hand_out(self, site: str, message: Message) -> None:
        """``message`` goes to ``site``'s agent: kept until acknowledged."""
        if message.record is None:
            return
        with self._lock:
            self._unacked[message.record] = (site, message, time.time())
            record = self.traffic[message.record]
            self.traffic[message.record] = replace(record, handed_out=record.handed_out + 1)

    def acknowledge(self, site: str, record: int) -> bool:
        """``site``'s agent has the message: False when it is not one of its own (or was
        acknowledged already, which is harmless)."""
        with self._lock:
            held = self._unacked.get(record)
            if held is None or held[0] != site:
                return False
            del self._unacked[record]
            self.traffic[record] = replace(self.traffic[record], read=time.time())
            return True

    def overdue(self, site: str) -> list[Message]:
        """``site``'s messages handed out but not acknowledged within ``ack_timeout``: taken
        back, to be handed out again."""
        now = time.time()
        with self._lock:
            late = [
                (record, message)
                for record, (owner, message, since) in self._unacked.items()
                if owner == site and now - since > self.limits.ack_timeout
            ]
            for record, _ in late:
                del self._unacked[record]
        return [message for _, message in sorted(late, key=lambda item: item[0])]

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
            if kind == "status":
                self._reported.notify_all()

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

    def has_reported(self, site: str, wait: float = 0.0) -> bool:
        """Whether ``site`` reported a state yet, waiting up to ``wait`` seconds for it (told
        at once when it does: a site's start-up slot is free as soon as its app answers)."""
        with self._reported:
            return self._reported.wait_for(lambda: site in self.statuses, wait)

    def site_traffic(self) -> dict[str, SiteTraffic]:
        """Site -> its totals so far (copies: safe to read from any thread)."""
        with self._lock:
            return {site: replace(totals) for site, totals in self._per_site.items()}

    def memory_report(self, site: str) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self.memory.get(site, {}).items() if k != "time"}
