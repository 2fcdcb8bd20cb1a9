"""What the relay accepts from a client, as plain functions: tested without sockets.

Every check raises ``Refused`` with the HTTP status and a message meant for the sender (and
for the one warning line the relay logs). Nothing here trusts a client: an agent may be
buggy, and a hostile app's text (memo, status message) reaches the relay through it.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from fedsim.relay.kinds import COORDINATOR_ONLY_KINDS, KINDS
from fedsim.relay.limits import (
    MAX_MEMO_CHARS,
    MAX_STATE_CHARS,
    MAX_STATUS_MESSAGE_CHARS,
    human_bytes,
)
from fedsim.relay.routing import Routing, UnknownDestination

MAX_WAIT = 30.0

KNOWN_STATES = frozenset({"initializing", "running", "action_required", "error", "finished"})
"""States of the FeatureCloud engine. Other short strings are accepted too (older engines and
hand-written apps use their own): refusing them would fail a working app for a label."""

STATUS_FIELDS = frozenset({"state", "message", "progress", "finished", "template"})
TEMPLATES = frozenset({"v1", "v2"})


class Refused(ValueError):
    """A client's request the relay will not serve; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def printable(text: str, limit: int = 80) -> str:
    """A client's text made safe for one log line: control characters escaped, length cut."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


def check_memo(memo: str | None) -> str | None:
    if memo is None:
        return None
    if len(memo) > MAX_MEMO_CHARS:
        raise Refused(400, f"memo is {len(memo)} characters; at most {MAX_MEMO_CHARS} allowed")
    if has_control_characters(memo):
        raise Refused(400, f"memo contains control characters: {printable(memo)!r}")
    return memo


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise Refused(400, f"unknown message kind {printable(kind)!r} (known: {known})")
    return kind


def check_route(routing: Routing, sender: str, destination: str | None, kind: str) -> list[str]:
    """Who receives the message; refused when the destination or the kind does not fit."""
    try:
        receivers = routing.receivers(sender, destination)
    except UnknownDestination:
        raise Refused(400, f"no site named {printable(destination or '')!r} in this run") from None
    if kind in COORDINATOR_ONLY_KINDS and receivers != [routing.coordinator]:
        raise Refused(
            400,
            f"{kind} from {sender} refused: it may only go to the coordinator "
            f"{routing.coordinator}, not to {', '.join(receivers) or 'nobody'}",
        )
    return receivers


def parse_wait(text: str | None) -> float:
    """Seconds of a long poll, 0 to ``MAX_WAIT``; ``nan``, ``inf`` and words are refused."""
    if text is None or text == "":
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        raise Refused(400, "wait must be a number of seconds") from None
    if not math.isfinite(wait):
        raise Refused(400, "wait must be a finite number of seconds")
    return min(max(wait, 0.0), MAX_WAIT)


def check_content_length(header: str | None, limit: int) -> int | None:
    """The declared body size, refused up front when it is over the limit."""
    if header is None:
        return None
    if not header.isdigit():
        raise Refused(400, "Content-Length must be a number of bytes")
    size = int(header)
    if size > limit:
        raise Refused(413, too_large(size, limit))
    return size


def too_large(size: int | None, limit: int) -> str:
    got = f"{human_bytes(size)} is" if size is not None else "the body is"
    return f"{got} over the relay's limit of {human_bytes(limit)} per request"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Strict JSON (no NaN or Infinity) that must be an object."""
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise Refused(400, f"{what} must be JSON") from None
    if not isinstance(value, dict):
        raise Refused(400, f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _optional_text(report: dict[str, Any], name: str) -> str | None:
    value = report.get(name)
    if value is not None and not isinstance(value, str):
        raise Refused(400, f"status {name} must be text or null, not {type(value).__name__}")
    return value


def clean_status(report: dict[str, Any]) -> dict[str, Any]:
    """A status report with only the known fields, checked; a long message is cut, not refused.

    The message comes from the app (someone else's code) and ends on the console: it is cut
    to ``MAX_STATUS_MESSAGE_CHARS`` and its control characters are replaced by spaces.
    """
    unknown = set(report) - STATUS_FIELDS
    if unknown:
        raise Refused(400, f"status has unknown fields: {', '.join(sorted(unknown))[:200]}")
    state = _optional_text(report, "state")
    if state is not None and (len(state) > MAX_STATE_CHARS or has_control_characters(state)):
        raise Refused(400, f"status state {printable(state)!r} is not a short label")
    message = _optional_text(report, "message")
    if message is not None:
        message = "".join(
            " " if unicodedata.category(c) == "Cc" else c
            for c in message[:MAX_STATUS_MESSAGE_CHARS]
        )
    progress = report.get("progress")
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)):
            raise Refused(400, "status progress must be a number from 0 to 1, or null")
        if not (math.isfinite(progress) and 0 <= progress <= 1):
            raise Refused(400, f"status progress {progress!r} is not between 0 and 1")
        progress = float(progress)
    finished = report.get("finished", False)
    if not isinstance(finished, bool):
        raise Refused(400, "status finished must be true or false")
    template = report.get("template", "v2")
    if template not in TEMPLATES:
        raise Refused(400, f"status template must be one of {', '.join(sorted(TEMPLATES))}")
    return {
        "state": state,
        "message": message,
        "progress": progress,
        "finished": finished,
        "template": template,
    }


def clean_memory(report: dict[str, Any]) -> dict[str, int]:
    """Peak memory figures: names ending in ``_bytes``, each a non-negative integer."""
    if len(report) > 16:
        raise Refused(400, "memory report has too many fields")
    for name, value in report.items():
        if not (name.endswith("_bytes") and len(name) <= 64 and name.isidentifier()):
            raise Refused(400, f"memory field {printable(name)!r} is not a *_bytes name")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Refused(400, f"memory field {name} must be a non-negative integer")
    return dict(report)
