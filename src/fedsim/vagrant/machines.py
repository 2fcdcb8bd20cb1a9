"""The VMs a config asks for, and the Vagrantfile that makes them (libvirt provider).

Why one isolated libvirt network per VM: vagrant-libvirt puts every VM on one shared NAT
network by default, where the VMs reach each other and the internet. Here each VM's
management network is its own /30 of the config's ``network`` with no forwarding
(``management_network_mode = "none"``): the host holds .1, the VM gets .2 (the only address
its DHCP range holds), and nothing routes between the bridges or out of the machine. The
only path from a site's VM to the relay is then the SSH reverse forward that every SSH site
gets; the wheelhouses reach it over SSH too (provisioning downloads nothing).

The ``network`` names the set of VMs: its Vagrantfile folder and the libvirt names of its
domains and networks are derived from it, so every command (``fedsim run``, ``fedsim vm
...``) on a config with that network finds the same VMs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from fedsim.appenv import cache_root
from fedsim.config import VAGRANT_LOCATION, RunConfig, VagrantConfig

DEFAULT_QEMU_CPU = "Nehalem"
"""Under software emulation: x86-64-v2, which numpy's wheels need; TCG runs it."""


@dataclass(frozen=True)
class Machine:
    """One site's VM: Vagrant's machine name and the VM's hostname are the site's name."""

    name: str
    network: IPv4Network

    @property
    def address(self) -> IPv4Address:
        return self.network.network_address + 2

    @property
    def host_address(self) -> IPv4Address:
        """This machine's end of the VM's own network (the bridge)."""
        return self.network.network_address + 1


@dataclass(frozen=True)
class VmSet:
    """The VMs of one config: its settings, its machines, and where Vagrant keeps them."""

    settings: VagrantConfig
    machines: tuple[Machine, ...]

    @property
    def slug(self) -> str:
        """``fedsim-10-77-0-0-24``: the libvirt names' prefix and the folder's name."""
        return "fedsim-" + self.settings.network.replace(".", "-").replace("/", "-")

    @property
    def folder(self) -> Path:
        return cache_root() / "vagrant" / self.slug

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.machines]


def vm_set(config: RunConfig) -> VmSet | None:
    """The config's VMs in its order (VM N gets the N-th /30), or None if it has none."""
    names = [s.name for s in config.sites if s.location == VAGRANT_LOCATION]
    if not names:
        return None
    settings = config.vagrant or VagrantConfig()
    subnets = IPv4Network(settings.network).subnets(new_prefix=30)
    machines = tuple(Machine(name, next(subnets)) for name in names)
    return VmSet(settings, machines)


def _ruby(value: str) -> str:
    """A Ruby string literal: JSON's escapes, and ``#`` escaped against interpolation."""
    return json.dumps(value).replace("#", "\\#")


def vagrantfile(vms: VmSet) -> str:
    """The Vagrantfile, written by fedsim and rewritten whenever the config changes."""
    s = vms.settings
    provider = [
        f"    libvirt.driver = {_ruby(s.driver)}",
        f"    libvirt.cpus = {s.cpus}",
        f"    libvirt.memory = {s.memory}",
        '    libvirt.graphics_type = "none"',
        f"    libvirt.default_prefix = {_ruby(vms.slug + '-')}",
        '    libvirt.management_network_mode = "none"',
        '    libvirt.management_network_guest_ipv6 = "no"',
    ]
    cpu_model = s.cpu_model or (DEFAULT_QEMU_CPU if s.driver == "qemu" else None)
    if cpu_model is not None:
        provider += [
            '    libvirt.cpu_mode = "custom"',
            f"    libvirt.cpu_model = {_ruby(cpu_model)}",
        ]
    lines = [
        "# Written by fedsim from the config's [vagrant] table: edits are overwritten.",
        'Vagrant.configure("2") do |config|',
        f"  config.vm.box = {_ruby(s.box)}",
        "  config.vm.box_check_update = false",
        '  config.vm.synced_folder ".", "/vagrant", disabled: true',
        "  config.vm.provider :libvirt do |libvirt|",
        *provider,
        "  end",
    ]
    for m in vms.machines:
        lines += [
            f"  config.vm.define {_ruby(m.name)} do |vm|",
            f"    vm.vm.hostname = {_ruby(m.name)}",
            "    vm.vm.provider :libvirt do |libvirt|",
            f"      libvirt.management_network_name = {_ruby(f'{vms.slug}-{m.name}')}",
            f"      libvirt.management_network_address = {_ruby(str(m.network))}",
            "    end",
            "  end",
        ]
    lines.append("end")
    return "\n".join(lines) + "\n"
