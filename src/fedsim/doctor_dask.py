"""``fedsim doctor`` for Dask sites: is the cluster there, big enough, and able to hold sites.

Which worker holds which site is the scheduler's choice at run time, so every Dask site's
row describes the cluster as a whole: reachable when the scheduler answers; enough workers
for the sites at ``sites_per_worker``; at every worker fedsim importable (the site's task is
fedsim's code), its Python, the disk under its cache (where app environments are installed),
bubblewrap, and its clock against this one (the largest offset, best of three round trips).
A cluster the run would start itself (``cluster = ...``) cannot be checked before the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from fedsim.config import DaskConfig, SiteConfig
from fedsim.health import SiteHealth, python_problem
from fedsim.logs import get_logger

log = get_logger("doctor")

ROUNDS = 3


def _probe() -> dict[str, Any]:
    """Runs at each worker (``Client.run``): what a site's task there would need."""
    import platform
    import shutil

    from fedsim import __version__
    from fedsim.appenv import cache_root

    folder = cache_root()
    while not folder.is_dir():
        folder = folder.parent
    return {
        "python": platform.python_version(),
        "agent": __version__,
        "disk_free": shutil.disk_usage(folder).free,
        "sandbox": shutil.which("bwrap") is not None,
        "time": time.time(),
    }


def _clock_offsets(client: Any) -> dict[str, float]:
    """Each worker's clock minus ours, from the round trip of ``ROUNDS`` probes with the
    shortest round trip."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(ROUNDS):
        start, start_mono = time.time(), time.monotonic()
        answers = client.run(time.time)
        round_trip = time.monotonic() - start_mono
        for worker, remote in answers.items():
            offset = float(remote) - (start + round_trip / 2)
            if worker not in best or round_trip < best[worker][0]:
                best[worker] = (round_trip, offset)
    return {worker: offset for worker, (_, offset) in best.items()}


def _cluster_health(settings: DaskConfig, sites: int, timeout: float) -> SiteHealth:
    from distributed import Client

    assert settings.scheduler is not None
    health = SiteHealth(site="", location=f"dask {settings.scheduler}")
    try:
        client = Client(settings.scheduler, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        health.problems.append(f"the scheduler {settings.scheduler} does not answer: {exc}")
        return health
    try:
        health.reachable = True
        workers = len(client.nthreads())
        needed = math.ceil(sites / settings.sites_per_worker)
        health.location += f" ({workers} workers)"
        if workers < needed:
            health.problems.append(
                f"{sites} dask sites with sites_per_worker = {settings.sites_per_worker} need "
                f"{needed} workers; the cluster has {workers}"
            )
        if workers == 0:
            return health
        try:
            probes = client.run(_probe)
        except Exception as exc:  # fedsim missing at a worker: its error, as the worker says
            health.problems.append(f"fedsim cannot run at the workers: {type(exc).__name__}: {exc}")
            return health
        offsets = _clock_offsets(client)
    finally:
        client.close()
    pythons = sorted({p["python"] for p in probes.values()})
    health.python = ", ".join(pythons)
    for version in pythons:
        if problem := python_problem(version):
            health.problems.append(problem)
    health.agent = ", ".join(sorted({p["agent"] for p in probes.values()}))
    health.disk_free = min(p["disk_free"] for p in probes.values())
    bare = sorted(w for w, p in probes.items() if not p["sandbox"])
    health.sandbox = not bare
    if bare:
        health.notes.append(f"no bwrap at {', '.join(bare)}: their sites would run unsandboxed")
    health.clock_offset = max(offsets.values(), key=abs)
    return health


def check_dask_sites(
    settings: DaskConfig | None, sites: Sequence[SiteConfig], *, timeout: float
) -> list[SiteHealth]:
    """One row per Dask site, each describing the cluster (checked once)."""
    if not sites:
        return []
    assert settings is not None  # the config requires the table for dask sites
    if settings.scheduler is None:
        cluster = SiteHealth(site="", location=f"dask {settings.cluster}", reachable=True)
        cluster.notes.append("the cluster is started by the run: nothing to check before it")
    else:
        cluster = _cluster_health(settings, len(sites), timeout)
    rows = []
    for site in sites:
        row = SiteHealth(**{**cluster.__dict__, "site": site.name})
        row.problems, row.notes = list(cluster.problems), list(cluster.notes)
        rows.append(row)
    return rows
