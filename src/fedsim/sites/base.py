"""What a site is to the orchestrator, wherever it lives.

The orchestrator only ever calls these methods, so a site kind (local sandbox today; SSH,
Vagrant, Dask and a fork-server later) is swapped without touching the run logic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class AgentLaunch:
    """Everything a site needs to start its agent. Secrets travel as files, never as argv."""

    config: dict[str, Any]
    token: str
    env_file: Path | None
    app_dir: Path
    app_env: Path


class Site(Protocol):
    name: str
    output_dir: Path

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        """Place the site's own files where its app will find them (``/mnt/input``);
        ``overrides`` replace files of the same name (a workflow step's own config)."""

    def start(self, launch: AgentLaunch, on_line: LineSink) -> None:
        """Start the agent; every line it prints is handed to ``on_line``."""

    def poll(self) -> int | None:
        """The agent's exit code, or None while it runs; a site whose app died or broke a
        limit reports a failure here too."""

    def failure(self) -> str | None:
        """Why the site failed, in words, when the site knows (a limit, the app's exit)."""

    def memory(self) -> dict[str, int]:
        """Peak memory of the site's app as the placement measured it (bytes by name)."""

    def stop(self) -> None:
        """Stop everything the site runs; idempotent; returns when nothing is left."""

    def collect(self) -> None:
        """Bring the site's output into ``output_dir`` (a no-op where it is written there)."""
