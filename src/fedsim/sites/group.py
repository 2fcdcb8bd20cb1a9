"""A run's sites, driven together: opened, prepared, started and closed concurrently.

One pool of threads for the whole run, shut down only after every site is closed: a site's
processes are tied to the thread that started them (see ``local.py``), and a pool that let
its threads go would take the sites with them. Whatever is asked of every site waits for
every site, so no site is left half-started behind an error; errors name their site.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol, TypeVar

from fedsim.errors import FedsimError, SiteFailed
from fedsim.logs import get_logger
from fedsim.sites.base import Placement

log = get_logger("site")
T = TypeVar("T")
MAX_THREADS = 32
"""Starting a site is mostly waiting on the kernel and on child processes: threads suffice."""


class PlacementFamily(Protocol):
    """What the placements of one kind share in a run (a local run's uid block and seccomp
    filter; an SSH run's connections): made once, closed once after all its sites."""

    def close(self) -> None: ...


def site_error(name: str, action: str, exc: BaseException) -> FedsimError:
    """An error of one site as the run reports it: fedsim's own errors keep their kind (and
    exit code), with the site's name in front; anything else is that site failing."""
    if isinstance(exc, FedsimError):
        if exc.args and isinstance(exc.args[0], str) and f"site {name}" not in exc.args[0]:
            exc.args = (f"site {name}: {exc.args[0]}", *exc.args[1:])
        return exc
    error = SiteFailed(f"site {name} failed to {action}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class SiteGroup:
    def __init__(
        self, placements: Mapping[str, Placement], families: Iterable[PlacementFamily]
    ) -> None:
        self.placements = dict(placements)
        self._families = list(families)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(MAX_THREADS, len(self.placements))),
            thread_name_prefix="sites",
        )
        self._pending: set[Future[object]] = set()
        self._closed = False

    def each(
        self,
        action: str,
        call: Callable[[str, Placement], T],
        names: Iterable[str] | None = None,
    ) -> dict[str, T]:
        """``call(name, placement)`` for every site (or those named) at once; waits for all,
        then raises the first error in site order (the others are logged)."""
        chosen = list(self.placements) if names is None else list(names)
        futures: dict[str, Future[T]] = {
            name: self._pool.submit(call, name, self.placements[name]) for name in chosen
        }
        self._pending.update(futures.values())  # type: ignore[arg-type]
        wait(futures.values())
        self._pending.difference_update(futures.values())  # type: ignore[arg-type]
        results: dict[str, T] = {}
        errors: list[FedsimError] = []
        for name, future in futures.items():
            exc = future.exception()
            if exc is None:
                results[name] = future.result()
            else:
                errors.append(site_error(name, action, exc))
        for error in errors[1:]:
            log.error("%s", error)
        if errors:
            raise errors[0]
        return results

    @property
    def relay_bind(self) -> tuple[str, int]:
        """Where the relay's TLS listener listens: loopback (SSH forwards end there) unless
        a family reached over the network names an address (``relay_bind`` of a family)."""
        for family in self._families:
            bind: tuple[str, int] | None = getattr(family, "relay_bind", None)
            if bind is not None:
                return bind
        return ("127.0.0.1", 0)

    @property
    def remote(self) -> bool:
        """Some site reaches the relay over TLS: the run's relay listens for it."""
        return any(p.remote for p in self.placements.values())

    def open(self) -> None:
        """Open every site; when one cannot be opened, the others are closed again."""
        try:
            self.each("open", lambda _, p: p.open())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every site, then the families; never raises, logs what went wrong.
        Called from the run's cleanup, perhaps while a signal interrupted ``each``: what
        is still being started is waited for first, so that it is closed too."""
        if self._closed:
            return
        self._closed = True
        wait(list(self._pending))
        futures = {n: self._pool.submit(p.close) for n, p in self.placements.items()}
        wait(futures.values())
        for name, future in futures.items():
            exc = future.exception()
            if exc is not None:
                log.error("%s", site_error(name, "close", exc))
        for family in self._families:
            try:
                family.close()
            except Exception as exc:  # cleanup carries on, and says why
                log.error("closing the sites failed: %s", exc)
        self._pool.shutdown(wait=True)
