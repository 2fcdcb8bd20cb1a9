"""The FeatureCloud app protocol as the controller sees it; pure, tested without sockets."""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from fedsim.relay.limits import MAX_STATE_CHARS, MAX_STATUS_MESSAGE_CHARS


def _short_text(value: object, limit: int) -> str | None:
    """The app's text as the relay takes it: control characters as spaces, cut to ``limit``."""
    if value is None:
        return None
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in str(value)[:limit])
    return text


@dataclass(frozen=True)
class AppStatus:
    """One answer of ``GET /api/status``; fields older engines leave out read as None."""

    available: bool
    finished: bool
    state: str | None = None
    message: str | None = None
    progress: float | None = None
    destination: str | None = None
    memo: str | None = None
    smpc: dict[str, Any] | None = None
    dp: dict[str, Any] | None = None
    template: str = "v2"
    """``v1``: the older app template, whose status has only ``available`` and ``finished``;
    it routes by role and takes ``POST /api/data`` with the body only."""

    @property
    def failed(self) -> bool:
        """``state: "error"`` is a failure, with or without ``finished``: the engine sets both
        when it crashes, and some apps report the error alone and then retry for ever."""
        return self.state == "error"

    def display(self) -> dict[str, Any]:
        """What the orchestrator is told about the app: no routing, no payload.

        The app's text is cut to the relay's limits here: a long message from the app is its
        own business, not a reason for the relay to refuse the report and fail the site.
        """
        progress = self.progress
        if progress is not None and not math.isfinite(progress):
            progress = None
        return {
            "state": _short_text(self.state, MAX_STATE_CHARS),
            "message": _short_text(self.message, MAX_STATUS_MESSAGE_CHARS),
            "progress": None if progress is None else min(max(progress, 0.0), 1.0),
            "finished": self.finished,
            "template": self.template,
        }


V1_STATUS_FIELDS = {"available", "finished"}


def parse_status(body: bytes | str) -> AppStatus:
    raw = json.loads(body)
    if isinstance(raw, str):  # some engines send the status as a JSON string inside JSON
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"/api/status answered {type(raw).__name__}, not an object")
    progress = raw.get("progress")
    return AppStatus(
        available=bool(raw.get("available", False)),
        finished=bool(raw.get("finished", False)),
        state=raw.get("state"),
        message=raw.get("message"),
        progress=float(progress) if isinstance(progress, (int, float)) else None,
        destination=raw.get("destination"),
        memo=None if raw.get("memo") is None else str(raw["memo"]),
        smpc=raw.get("smpc"),
        dp=raw.get("dp"),
        template="v1" if set(raw) <= V1_STATUS_FIELDS else "v2",
    )


def setup_body(
    site: str, is_coordinator: bool, clients: list[str], coordinator: str
) -> dict[str, Any]:
    """Both ``coordinator`` (current engine) and ``master`` (older template) are sent."""
    return {
        "id": site,
        "coordinator": is_coordinator,
        "master": is_coordinator,
        "clients": clients,
        "coordinatorID": coordinator,
    }
