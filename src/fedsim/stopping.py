"""How a run is stopped from outside: Ctrl-C, SIGTERM and SIGHUP alike, and only once.

Snakemake, SLURM and systemd stop a job with SIGTERM; a closed terminal sends SIGHUP. Each
ends a run as Ctrl-C does: the signal becomes an exception in the main thread, and the
run's ``finally`` paths stop the sites and write the record. A second signal while that
happens (an impatient Ctrl-C, a scheduler that signals twice) must not cut the cleanup
short and lose the results, so once stopping has begun, signals are logged and ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fedsim.errors import ExitCode
from fedsim.logs import get_logger

log = get_logger("run")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODES = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
    signal.SIGHUP: ExitCode.HANGUP,
}


class StopSignal(BaseException):
    """A stop signal arrived; raised in the main thread wherever it was. A BaseException,
    as KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signal.Signals(signum)
        super().__init__(self.describe())

    def describe(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else self.signum.name

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.signum]


class Stopper:
    """Owns the stop signals for the duration of a run (main thread only; elsewhere a no-op,
    as Python delivers signals to the main thread alone)."""

    def __init__(self) -> None:
        self.stopping = False
        self._deferring = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            log.warning("%s: already stopping; ignored until the run's record is written", name)
            return
        if self._deferring:
            self._pending = signum
            log.warning("%s: stopping once the sites' outputs are collected", name)
            return
        self.stopping = True  # before raising: the next signal must find the shield up
        raise StopSignal(signum)

    def shield(self) -> None:
        """From now on signals are ignored: cleanup has begun, whatever began it."""
        self.stopping = True

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Collecting a step that ended well is not cut short either: a signal that arrives
        meanwhile stops the run right after it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None and not self.stopping:
            self.stopping = True
            raise StopSignal(self._pending)

    @contextmanager
    def installed(self) -> Iterator[Stopper]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
