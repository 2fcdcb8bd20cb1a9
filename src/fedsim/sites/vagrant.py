"""The Vagrant placement: a site in a VM of its own, which is from then on an SSH site.

The family brings every VM of the run up at once (the first site to open asks; the others
wait for the same ``vagrant up``), reads where each VM is and pins its host key
(``fedsim.vagrant.control``); each placement is then exactly an :class:`SshPlacement` on that
target: provisioned from the wheelhouses, the site host, the relay through an SSH reverse
forward. After the run the VMs are kept, suspended or destroyed as ``after_run`` says.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import SshTarget
from fedsim.logs import get_logger
from fedsim.sites.ssh import SshFamily, SshPlacement
from fedsim.vagrant.control import Vagrant
from fedsim.vagrant.machines import vm_set

if TYPE_CHECKING:
    from fedsim.config import RunConfig, SiteConfig

log = get_logger("vagrant")


def _progress(line: str) -> None:
    log.info("vagrant: %s", line.strip())


class VagrantFamily(SshFamily):
    """What a run's VM sites share: the SSH family's loop and wheelhouses, and the VMs."""

    def __init__(self, config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str):
        vms = vm_set(config)
        assert vms is not None
        super().__init__(config, sites, workdir, run_id)
        self._vagrant = Vagrant(vms)
        self._up = threading.Lock()
        self._targets: dict[str, SshTarget] | None = None

    def placement(self, site: SiteConfig) -> VagrantPlacement:
        return VagrantPlacement(
            site.name,
            SshTarget(host=site.name),
            family=self,
            limits=self._config.limits_of(site),
            run_id=self._run_id,
            staging=self._workdir / "ssh-staging" / site.name,
        )

    def target(self, site: str) -> SshTarget:
        """The site's VM as an SSH target; the first call brings every VM up."""
        with self._up:
            if self._targets is None:
                log.info(
                    "bringing up %d VM(s) in %s",
                    len(self._vagrant.vms.machines),
                    self._vagrant.folder,
                )
                self._targets = self._vagrant.up(progress=_progress)
            return self._targets[site]

    def close(self) -> None:
        super().close()
        after = self._vagrant.vms.settings.after_run
        if self._targets is None or after == "keep":
            return
        log.info("after the run: %s the VMs", after)
        if after == "suspend":
            self._vagrant.suspend(progress=_progress)
        else:
            self._vagrant.destroy(progress=_progress)


class VagrantPlacement(SshPlacement):
    """An SSH placement whose host is the site's VM, known once the VMs are up."""

    def open(self) -> None:
        family = self._family
        assert isinstance(family, VagrantFamily)
        self.target = family.target(self.name)
        super().open()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "kind": "vagrant",
            "location": "vagrant",
            "address": self.target.address,
        }
