"""``fedsim vm up | status | suspend | halt | destroy CONFIG`` and ``fedsim vm build-box``.

Each command works on the VMs of the config's ``location = "vagrant"`` sites and may be run
again: ``up`` leaves running VMs as they are, ``destroy`` on destroyed VMs does nothing.
Vagrant's lines are shown as they come (a VM under software emulation boots for a minute).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedsim.vagrant.control import Vagrant

ConfigArg = Annotated[Path, typer.Argument(help="The run config (fedsim.toml).", readable=False)]


def _show(line: str) -> None:
    from fedsim.cli.output import stderr

    stderr.print(line, markup=False, highlight=False)


def _vagrant(config: Path) -> Vagrant:
    from fedsim.config import load_config
    from fedsim.errors import ConfigError
    from fedsim.vagrant.control import Vagrant
    from fedsim.vagrant.machines import vm_set

    vms = vm_set(load_config(config))
    if vms is None:
        raise ConfigError(f'{config}: no site has location = "vagrant": no VMs to manage')
    return Vagrant(vms)


def up(config: ConfigArg) -> None:
    """Bring every VM of the config up (in parallel) and show where each is."""
    from fedsim.cli.output import stdout

    vagrant = _vagrant(config)
    start = time.monotonic()
    targets = vagrant.up(progress=_show)
    for name, target in targets.items():
        stdout.print(f"{name}\t{target.address}", markup=False)
    stdout.print(f"{len(targets)} VM(s) up in {time.monotonic() - start:.1f} s", markup=False)


def status(config: ConfigArg) -> None:
    """Each VM's state (running, paused, shutoff, not_created) and address."""
    from fedsim.cli.output import stdout

    vagrant = _vagrant(config)
    states = vagrant.states()
    for machine in vagrant.vms.machines:
        state = states.get(machine.name, "unknown")
        stdout.print(f"{machine.name}\t{state}\t{machine.address}", markup=False)


def suspend(config: ConfigArg) -> None:
    """Suspend the config's VMs (memory kept; `vm up` resumes them)."""
    _vagrant(config).suspend(progress=_show)


def halt(config: ConfigArg) -> None:
    """Shut the config's VMs down (disks kept)."""
    _vagrant(config).halt(progress=_show)


def destroy(config: ConfigArg) -> None:
    """Remove the config's VMs, their disks, their networks and their pinned host keys."""
    _vagrant(config).destroy(progress=_show)


def build_box(
    name: Annotated[str, typer.Option(help="The box's name in Vagrant.")] = "fedsim/debian12",
    suite: Annotated[str, typer.Option(help="The Debian release.")] = "bookworm",
    mirror: Annotated[
        str | None, typer.Option(help="A Debian mirror; default the one apt uses here.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Build even if Vagrant has the box.")] = False,
) -> None:
    """Build a vagrant-libvirt box from Debian's packages (needs root): sshd, Python,
    bubblewrap; no box registry, and VMs made from it need no internet."""
    from fedsim.cli.output import stdout
    from fedsim.vagrant.box import box_installed, build_box

    if not force and box_installed(name):
        stdout.print(f"{name}: already in Vagrant (--force builds it again)", markup=False)
        return
    built = build_box(name, suite=suite, mirror=mirror, progress=_show)
    stdout.print(f"{built.name}: built and added to Vagrant in {built.seconds:.0f} s", markup=False)


COMMANDS = {
    "up": up,
    "status": status,
    "suspend": suspend,
    "halt": halt,
    "destroy": destroy,
    "build-box": build_box,
}
