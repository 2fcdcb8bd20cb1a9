"""Where a site lives, as the orchestrator sees it: a placement, and a running site.

As dask's ``ProcessInterface`` separates a process from where it runs, a ``Placement``
separates a site from its place (a sandbox on this machine today; an SSH host, a VM, a Dask
worker or a fork-server later). The orchestrator calls only these methods and cannot tell
placements apart:

    open -> prepare(app) -> [put_inputs -> spawn -> (RunningSite: poll, stop) ->
    fetch_outputs] for each workflow step -> close

A site is opened once per run and closed once at its end; each step spawns a new agent (and
app) in it. What crosses this seam on the orchestrator's side (app folder, environment,
relay socket, secrets) is host paths and bytes in a ``SiteStep``; what reaches the agent is
an ``AgentLaunch``, which names none of them, so that it can travel to another machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedsim.agent.launch import DEFAULT_RELAY_URL, AgentLaunch
from fedsim.safefiles import Skipped

__all__ = [
    "DEFAULT_RELAY_URL",
    "AgentLaunch",
    "AppBundle",
    "LineSink",
    "Placement",
    "RelayTls",
    "RunningSite",
    "SiteStep",
    "wait_by_polling",
]


class LineSink(Protocol):
    """Receives each line a site prints, as ``component<TAB>LEVEL<TAB>message`` (``logs.py``),
    with when it was printed (this machine's clock) if the placement knows better than now."""

    def __call__(self, line: str, at: float | None = None, /) -> None: ...


@dataclass(frozen=True)
class AppBundle:
    """An app as the orchestrator holds it: its folder and the environment built for it on
    this machine. A placement makes both available at the site (``prepare``)."""

    app_dir: Path
    env: Path


@dataclass(frozen=True)
class RelayTls:
    """The relay's TLS listener (``host``, ``port``: this machine's loopback unless a family
    asked for another address, ``SiteGroup.relay_bind``), for sites that reach it through a
    forward or a proxy of their own, and the run's CA that agents pin (``ca_pem``, public)."""

    port: int
    ca_pem: str
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class SiteStep:
    """The orchestrator's side of one step at one site: never serialised, never sent whole.

    ``token`` and the site's ``env_file`` are secrets: a placement hands them to the agent
    (token) and to the app (env file) through files or descriptors only they can read, never
    argv. ``output_dir`` is where the step's outputs must end up on this machine; a placement
    that can let the app write there directly does, others copy in ``fetch_outputs``."""

    app: AppBundle
    relay_socket: Path
    output_dir: Path
    token: str = field(repr=False)
    env_file: Path | None = None
    relay_tls: RelayTls | None = None
    """Set when some placement of the run is ``remote``."""


def relay_folder(workdir: Path) -> Path:
    """The folder of a run's private working folder ``workdir`` that holds the relays'
    sockets and nothing else: the agent fork-server sees it, for its children to bind their
    step's socket, and no token or launch file is near it."""
    return workdir / "relay"


def relay_socket_in(workdir: Path, step: int) -> Path:
    """Where the relay of step ``step`` listens (each step has a relay of its own)."""
    return relay_folder(workdir) / f"step-{step}.sock"


def wait_by_polling(
    poll: Callable[[], int | None], timeout: float | None, interval: float = 0.05
) -> int | None:
    """``RunningSite.wait`` for a site whose end is found by polling: ``poll`` until it
    answers or ``timeout`` runs out (None: until it answers)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (code := poll()) is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(interval)
    return code


class RunningSite(Protocol):
    """One step's agent and app at a site, once spawned. Lines go to the sink given to
    ``Placement.spawn``."""

    def poll(self) -> int | None:
        """The agent's exit code, or None while it runs; a site whose app died or broke a
        limit reports a failure here too."""

    def wait(self, timeout: float | None = None) -> int | None:
        """``poll`` until it answers or ``timeout`` runs out (None: until it answers)."""

    def failure(self) -> str | None:
        """Why the site failed, in words, when the placement knows (a limit, the app's exit)."""

    def memory(self) -> dict[str, int]:
        """Peak memory of the site's app as the placement measured it (bytes by name)."""

    def stop(self) -> None:
        """Stop everything the step runs at the site; idempotent; returns when nothing is left."""


class Placement(Protocol):
    """Where one site lives for the length of a run."""

    name: str
    remote: bool
    """Reaches the relay over TLS (``SiteStep.relay_tls``), not through a socket here."""

    def describe(self) -> dict[str, Any]:
        """Where the site lived, for ``summary.json`` (kind, location, sandboxed, clock)."""

    def open(self) -> None:
        """Make the place (its network, its folders); undone by ``close``."""

    def prepare(self, app: AppBundle) -> None:
        """Make ``app`` and its environment available at the site, before any step runs."""

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        """Replace the site's input (``/mnt/input``) with these files; ``overrides`` replace
        files of the same name (a workflow step's own config)."""

    def spawn(self, launch: AgentLaunch, step: SiteStep, on_line: LineSink) -> RunningSite:
        """Start the step's app and agent; every line they print goes to ``on_line``."""

    def fetch_outputs(self, dest: Path) -> list[Skipped]:
        """After the step stopped: bring what the app wrote into ``dest`` (regular files and
        folders only, nothing that leads elsewhere) and say what was left out."""

    def close(self) -> None:
        """Stop whatever still runs there and remove the place; idempotent."""
