"""One site's readiness as ``fedsim doctor`` reports it, whatever kind of site it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MIN_PYTHON = (3, 11)
"""The agent is fedsim itself, which needs this Python at the site."""


@dataclass
class SiteHealth:
    """One row of the doctor's table; ``problems`` empty means ready. Values a check could
    not find are None (shown as "-"), never a guess."""

    site: str
    location: str
    reachable: bool = False
    python: str | None = None
    disk_free: int | None = None
    """Bytes free in the site's workdir (or its nearest existing parent), or locally in the
    temp folder where local sites live."""
    agent: str | None = None
    """fedsim's version importable at the site, or ``"not provisioned"``."""
    sandbox: bool | None = None
    clock_offset: float | None = None
    """Seconds the site's clock is ahead of this one (half the round trip corrected)."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.reachable and not self.problems

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def python_problem(version: str | None) -> str | None:
    if version is None:
        return "no python3 found"
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return f"cannot read the Python version {version!r}"
    if found < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return f"Python {version} is older than {need}, which the agent needs"
    return None
