"""Network conditions on each site's path to the relay: latency, jitter, loss, bandwidth.

Applied where messages pass, in the relay, so it holds for every placement (local, SSH, ...):
a message from S to R is uploaded over S's link (S's agent waits for its POST as long as
the upload takes, behind S's earlier uploads), reaches the relay after S's latency, then is
downloaded over R's link (behind R's earlier downloads) and becomes readable after R's
latency. Each hop is one site's link: 100 ms of latency at each of two sites adds 100 ms per
hop, 200 ms from participant to coordinator.

Loss is modelled as on a reliable transport (the relay speaks HTTP over TCP): a lost segment
is resent, late, not missing: each 1460-byte segment is lost with the link's probability and
each loss adds one retransmission timeout (at least 200 ms, as Linux's, and twice the latency).
Messages keep their order per receiver, as one TCP connection keeps it. Status and memory
reports are not delayed: they are fedsim's bookkeeping, not the analysis's traffic.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

SEGMENT_BYTES = 1460
MIN_RTO = 0.2


@dataclass(frozen=True)
class LinkProfile:
    """One site's link to the relay. Bandwidths in bits per second; None: unlimited."""

    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    up_bps: float | None = None
    down_bps: float | None = None

    @property
    def is_ideal(self) -> bool:
        return self == LinkProfile()


PROFILES: dict[str, LinkProfile] = {
    # a hospital's own network: switched, fast, near
    "lan": LinkProfile(latency=0.0005, jitter=0.0001, up_bps=1e9, down_bps=1e9),
    # institutions across a country over the internet
    "wan": LinkProfile(latency=0.025, jitter=0.005, loss=0.0005, up_bps=100e6, down_bps=100e6),
    # a clinic behind a site-to-site VPN on a modest business line
    "hospital-vpn": LinkProfile(latency=0.06, jitter=0.015, loss=0.002, up_bps=10e6, down_bps=50e6),
}
"""Named profiles a config may use (``network = "wan"``)."""


class NetworkModel:
    """The links of a run's sites and when each link is next free. Thread-safe; its
    randomness (jitter, loss) is seeded from the run's seed when there is one."""

    def __init__(self, links: dict[str, LinkProfile], seed: int | None = None) -> None:
        self.links = links
        self._random = random.Random(seed)
        self._up_free: dict[str, float] = {}
        self._down_free: dict[str, float] = {}
        self._readable: dict[str, float] = {}
        self._lock = threading.Lock()

    def _link(self, site: str) -> LinkProfile:
        return self.links.get(site, LinkProfile())

    def _transfer(self, link: LinkProfile, size: int, bps: float | None) -> float:
        """Seconds on the wire: serialisation, latency and jitter, and resent segments."""
        seconds = 0.0 if bps is None else size * 8 / bps
        seconds += link.latency
        if link.jitter:
            seconds += abs(self._random.gauss(0.0, link.jitter))
        if link.loss:
            segments = max(1, math.ceil(size / SEGMENT_BYTES))
            lost = sum(self._random.random() < link.loss for _ in range(min(segments, 10_000)))
            seconds += lost * max(MIN_RTO, 2 * link.latency)
        return seconds

    def upload(self, sender: str, size: int, now: float) -> float:
        """When a message of ``size`` bytes that ``sender`` starts sending at ``now`` has
        reached the relay (its uploads queue behind each other)."""
        link = self._link(sender)
        with self._lock:
            start = max(now, self._up_free.get(sender, 0.0))
            wire = 0.0 if link.up_bps is None else size * 8 / link.up_bps
            self._up_free[sender] = start + wire
            return start + self._transfer(link, size, link.up_bps)

    def download(self, receiver: str, size: int, arrived: float) -> float:
        """When a message that reached the relay at ``arrived`` is readable by
        ``receiver``: behind its earlier downloads, and never before an earlier message."""
        link = self._link(receiver)
        with self._lock:
            start = max(arrived, self._down_free.get(receiver, 0.0))
            wire = 0.0 if link.down_bps is None else size * 8 / link.down_bps
            self._down_free[receiver] = start + wire
            readable = max(
                start + self._transfer(link, size, link.down_bps),
                self._readable.get(receiver, 0.0),
            )
            self._readable[receiver] = readable
            return readable
