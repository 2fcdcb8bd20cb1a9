"""Faults a config injects at a site, to see how a federated analysis copes.

Why in the relay: it is where every site's traffic passes whatever its placement, so a lost
link or a dropped message is the same for a local, an SSH or any other site. A fault fires
once, on its trigger: a time after its step started (``at``), the first message the site
sends with a memo (``memo``), or once the site has sent a number of messages
(``after_messages``). Then, by action:

- ``crash``: the orchestrator stops the site (its agent and app), which fails the run, named;
- ``hang``: the relay stops answering the site for good (its agent waits; the run ends by
  stall detection or its timeout, with each site's state);
- ``disconnect``: the relay refuses the site as an unreachable link would, for ``duration``
  seconds (or for good): the agent retries a while, as over a real link; messages for it wait;
- ``drop``: the site's next ``count`` messages are accepted and never delivered (recorded in
  ``traffic.csv`` as dropped).

What fired, when, and what the other sites were doing then, goes to the log and to
``summary.json``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["crash", "hang", "disconnect", "drop"]


@dataclass
class Fault:
    site: str
    action: Action
    at: float | None = None
    memo: str | None = None
    after_messages: int | None = None
    duration: float | None = None
    count: int = 1
    dropped: int = 0
    fired: float | None = None
    """When it fired (epoch seconds)."""
    others: dict[str, str] = field(default_factory=dict)
    """What each other site's app reported when it fired."""

    def trigger(self) -> str:
        if self.at is not None:
            return f"{self.at:g} s after the step's sites started"
        if self.memo is not None:
            return f"its first message with memo {self.memo!r}"
        return f"after {self.after_messages} message{'' if self.after_messages == 1 else 's'}"

    def describe(self) -> str:
        what = {
            "crash": "crashed",
            "hang": "hung",
            "disconnect": "lost its link"
            + ("" if self.duration is None else f" for {self.duration:g} s"),
            "drop": f"dropped {self.count} message{'' if self.count == 1 else 's'}",
        }[self.action]
        return f"site {self.site} {what} (fault injected: {self.trigger()})"

    def as_json(self, started: float) -> dict[str, Any]:
        return {
            "site": self.site,
            "action": self.action,
            "trigger": self.trigger(),
            "fired_after_s": None if self.fired is None else round(self.fired - started, 3),
            "others": dict(self.others),
        }


class FaultPlan:
    """A step's faults and their state; shared by the relay's loop and the orchestrator."""

    def __init__(self, faults: list[Fault], started: float, sites: list[str], states: Any) -> None:
        """``states``: a callable giving each site's last reported app state, to say what
        the other ``sites`` were doing when a fault fired."""
        self.faults = faults
        self.started = started
        self._sites = sites
        self._states = states
        self._sent: dict[str, int] = {}
        self._announced: set[int] = set()
        self._lock = threading.Lock()

    def _fire(self, fault: Fault, now: float) -> None:
        fault.fired = now
        states = self._states()
        fault.others = {
            name: str(
                states.get(name, {}).get("message")
                or states.get(name, {}).get("state")
                or "no state reported"
            )
            for name in self._sites
            if name != fault.site
        }

    def start_clock(self, now: float) -> None:
        """Time triggers count from here, when every site of the step has started: on a
        busy machine or with many sites, starting them alone can take longer than a fault's
        ``at``, and a fault meant for the analysis would hit a site still starting."""
        self.started = now

    def tick(self, now: float | None = None) -> None:
        """Fire the faults whose time has come."""
        now = time.time() if now is None else now
        with self._lock:
            for fault in self.faults:
                if fault.fired is None and fault.at is not None and now - self.started >= fault.at:
                    self._fire(fault, now)

    def on_send(self, site: str, memo: str | None) -> Action | None:
        """A message ``site`` sends: fires its memo and count triggers. ``drop``: it must be
        dropped; ``hang``/``disconnect``: the site is held or cut from here on (this message
        included); None: it goes on."""
        now = time.time()
        with self._lock:
            sent = self._sent.get(site, 0)
            self._sent[site] = sent + 1
            verdict: Action | None = None
            for fault in self.faults:
                if fault.site != site:
                    continue
                if fault.fired is None and (
                    (fault.memo is not None and memo == fault.memo)
                    or (fault.after_messages is not None and sent >= fault.after_messages)
                ):
                    self._fire(fault, now)
                dropping = fault.action == "drop" and fault.fired is not None
                if dropping and fault.dropped < fault.count:
                    fault.dropped += 1
                    verdict = "drop"
        return self.blocked(site) or verdict

    def blocked(self, site: str) -> Action | None:
        """``hang`` or ``disconnect`` while such a fault holds the site, else None."""
        now = time.time()
        with self._lock:
            for fault in self.faults:
                if fault.site != site or fault.fired is None:
                    continue
                if fault.action == "hang":
                    return "hang"
                if fault.action == "disconnect" and (
                    fault.duration is None or now < fault.fired + fault.duration
                ):
                    return "disconnect"
            return None

    def newly_fired(self) -> list[Fault]:
        """Faults that fired since the last call (each reported once)."""
        with self._lock:
            fresh = [f for f in self.faults if f.fired is not None and id(f) not in self._announced]
            self._announced.update(id(f) for f in fresh)
            return fresh

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_json(self.started) for f in self.faults if f.fired is not None]
