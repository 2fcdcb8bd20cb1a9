"""One lock per entry of fedsim's cache (``appenv.cache_root``)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Held while a process checks or fills a cache entry: two runs, or two Dask workers
    sharing one cache, filling the same entry take turns, and the second finds it complete
    rather than removing or replacing what the first is using."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
