"""A step at a remote site (SSH host, Dask worker), as the orchestrator holds it.

The site's far end sends the agent's exit as a message (``remote_host.py``); until then the
step runs, unless the placement lost its site (a cut connection, a dead worker), which ends
the step at once as a failure naming where it was lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from fedsim.sites.base import wait_by_polling


class RemotePlacement(Protocol):
    def lost_failure(self) -> str | None:
        """Why the site is lost, naming where it lived; None while it is there."""

    def stop_running(self) -> None:
        """Ask the far end to stop the running step."""


class Reply(Protocol):
    """A request's future (asyncio's or concurrent's: both have these)."""

    def done(self) -> bool: ...

    def set_result(self, result: dict[str, Any], /) -> None: ...


def dispatch(
    message: dict[str, Any],
    reply: Callable[[Any], Reply | None],
    line: Callable[[str, float], None],
    running: RemoteRunningSite | None,
) -> None:
    """One message of a site host (``remote_host.py``), however it came: a reply completes
    its request's future (``reply(id)``), a line goes to the log with the host's time, an
    exit ends the running step."""
    if "reply" in message:
        future = reply(message["reply"])
        if future is not None and not future.done():
            future.set_result(message)
    elif "line" in message:
        line(str(message["line"]), float(message.get("t", time.time())))
    elif "exit" in message and running is not None:
        running.ended(message)


class RemoteRunningSite:
    """Ends with the far end's ``exit`` message (``ended``), or when the site is lost."""

    def __init__(self, placement: RemotePlacement) -> None:
        self._placement = placement
        self._code: int | None = None
        self._failure: str | None = None
        self._memory: dict[str, int] = {}
        self._stopped = False

    def ended(self, message: dict[str, Any]) -> None:
        self._failure = message.get("failure")
        self._memory = {k: int(v) for k, v in (message.get("memory") or {}).items()}
        self._code = int(message["exit"])

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        lost = self._placement.lost_failure()
        if lost is not None:
            self._failure = lost
            self._code = 255
        return self._code

    def wait(self, timeout: float | None = None) -> int | None:
        return wait_by_polling(self.poll, timeout)

    def failure(self) -> str | None:
        return self._failure

    def memory(self) -> dict[str, int]:
        return dict(self._memory)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._placement.stop_running()
