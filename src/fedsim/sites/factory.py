"""From the config's sites to placements: the one place that knows which kinds exist.

Each site's kind picks a family from ``KINDS``; the family is made once per run for all sites
of its kind and makes their placements. A new kind (SSH, a VM, a Dask worker) adds a module
with its family and placement and a line here; ``run.py`` does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fedsim.config import DASK_LOCATION, VAGRANT_LOCATION
from fedsim.sites.base import Placement
from fedsim.sites.group import SiteGroup

if TYPE_CHECKING:
    from fedsim.config import RunConfig, SiteConfig


class Family(Protocol):
    def placement(self, site: SiteConfig) -> Placement: ...

    def close(self) -> None: ...


def _local(config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str) -> Family:
    from fedsim.sites.local import LocalFamily  # each kind's imports only where it is used

    return LocalFamily(config, sites, workdir, run_id)


def _ssh(config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str) -> Family:
    from fedsim.sites.ssh import SshFamily

    return SshFamily(config, sites, workdir, run_id)


def _dask(config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str) -> Family:
    from fedsim.sites.dask import DaskFamily

    return DaskFamily(config, sites, workdir, run_id)


def _vagrant(config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str) -> Family:
    from fedsim.sites.vagrant import VagrantFamily

    return VagrantFamily(config, sites, workdir, run_id)


KINDS: dict[str, Callable[[RunConfig, Sequence[SiteConfig], Path, str], Family]] = {
    "local": _local,
    "ssh": _ssh,
    "dask": _dask,
    "vagrant": _vagrant,
}


def site_kind(site: SiteConfig) -> str:
    """Where the config puts a site: ``ssh`` for an ``ssh://`` location, ``dask`` for a
    worker of the ``[dask]`` cluster, ``vagrant`` for a VM of its own, else local."""
    if site.location == DASK_LOCATION:
        return "dask"
    if site.location == VAGRANT_LOCATION:
        return "vagrant"
    return "ssh" if site.ssh is not None else "local"


def make_placements(config: RunConfig, workdir: Path, run_id: str) -> SiteGroup:
    """The run's placements, not yet opened (``SiteGroup.open``). ``workdir`` is private to
    the run (mode 0700, not recorded): sockets, tokens and the sites' folders go there.
    A family that cannot be made (no bubblewrap) fails here, before anything is built."""
    by_kind: dict[str, list[SiteConfig]] = {}
    for site in config.sites:
        by_kind.setdefault(site_kind(site), []).append(site)
    families: list[Family] = []
    placements: dict[str, Placement] = {}
    try:
        for kind, sites in by_kind.items():
            family = KINDS[kind](config, sites, workdir, run_id)
            families.append(family)
            for site in sites:
                placements[site.name] = family.placement(site)
    except BaseException:
        for family in families:
            family.close()
        raise
    ordered = {s.name: placements[s.name] for s in config.sites}
    return SiteGroup(ordered, families)
