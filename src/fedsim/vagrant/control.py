"""Driving Vagrant for one config's VMs: up, status, suspend, halt, destroy, and SSH targets.

Vagrant is run as a command (``vagrant`` with the vagrant-libvirt plugin), in the VMs'
folder (``VAGRANT_CWD``), with its update checks off: it must not reach out to the internet
on its own. Its lines are passed to a progress callback as they come, since a VM under
software emulation takes a minute to boot.

Host keys: ``vagrant ssh-config`` turns checking off; fedsim does not. A box made by ``fedsim
vm build-box`` carries its host's public key (``fedsim_host_key.pub`` next to its login
key): it is written to the VMs' own known_hosts file before the first connection, so every
key is checked. For another box the key is trusted on first use, over the VM's own isolated
network, and pinned in that file from then on; ``destroy`` forgets it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from fedsim.config import SshTarget
from fedsim.errors import VmError
from fedsim.logs import get_logger
from fedsim.vagrant.machines import VmSet, vagrantfile

log = get_logger("vagrant")

Progress = Callable[[str], None]
HOST_KEY_FILE = "fedsim_host_key.pub"
"""In a box made by ``fedsim vm build-box``, beside its login key: the VMs' host key."""
UP_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 600.0
TAIL_LINES = 25


def _quiet(line: str) -> None:
    log.debug("%s", line)


class Vagrant:
    """One config's VMs (see the module docstring)."""

    def __init__(self, vms: VmSet) -> None:
        self.vms = vms
        self.folder = vms.folder
        self.known_hosts = self.folder / "known_hosts"

    def _run(
        self, *args: str, progress: Progress = _quiet, timeout: float = COMMAND_TIMEOUT
    ) -> str:
        """``vagrant ARGS`` in the VMs' folder; its output, or VmError with its last lines."""
        vagrant = shutil.which("vagrant")
        if vagrant is None:
            raise VmError(
                "vagrant is not installed; VM sites need Vagrant with the libvirt provider "
                "(on Debian: apt-get install vagrant vagrant-libvirt libvirt-daemon-system)"
            )
        env = {
            **os.environ,
            "VAGRANT_CWD": str(self.folder),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        }
        lines: list[str] = []
        with subprocess.Popen(
            [vagrant, *args, "--no-color"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.folder,
        ) as process:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                lines.append(line)
                if line.strip():
                    progress(line)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        if code != 0:
            tail = "\n".join(lines[-TAIL_LINES:])
            raise VmError(f"vagrant {args[0]} failed (exit {code}) in {self.folder}:\n{tail}")
        return "\n".join(lines)

    def write(self) -> None:
        """The Vagrantfile, rewritten only when the config changed it."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder / "Vagrantfile"
        text = vagrantfile(self.vms)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)

    def up(self, progress: Progress = _quiet) -> dict[str, SshTarget]:
        """Every VM made or started, all at once; one that runs already is left as it is."""
        self.write()
        self._run("up", "--parallel", *self.vms.names, progress=progress, timeout=UP_TIMEOUT)
        return self.targets()

    def states(self) -> dict[str, str]:
        """Vagrant's state of each VM (``running``, ``shutoff``, ``paused``, ``not_created``)."""
        if not (self.folder / "Vagrantfile").is_file():
            return dict.fromkeys(self.vms.names, "not_created")
        self.write()
        states: dict[str, str] = {}
        for line in self._run("status", "--machine-readable").splitlines():
            fields = line.split(",")
            if len(fields) >= 4 and fields[2] == "state" and fields[1] in self.vms.names:
                states[fields[1]] = fields[3]
        return states

    def suspend(self, progress: Progress = _quiet) -> None:
        self._on_created("suspend", progress)

    def halt(self, progress: Progress = _quiet) -> None:
        self._on_created("halt", progress)

    def destroy(self, progress: Progress = _quiet) -> None:
        """VMs, their disks and their networks removed; the folder and pinned keys too."""
        if (self.folder / "Vagrantfile").is_file():
            self._on_created("destroy", progress, "--force")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _on_created(self, command: str, progress: Progress, *flags: str) -> None:
        """Only for the VMs that exist: Vagrant refuses some commands on the others."""
        created = [name for name, state in self.states().items() if state != "not_created"]
        if created:
            self._run(command, *flags, *created, progress=progress)

    def targets(self) -> dict[str, SshTarget]:
        """Each running VM as an SSH target, its host key pinned (see the module docstring)."""
        text = self._run("ssh-config", *self.vms.names)
        hosts = parse_ssh_config(text)
        targets: dict[str, SshTarget] = {}
        pinned: list[str] = []
        for machine in self.vms.machines:
            entry = hosts.get(machine.name)
            if entry is None or "hostname" not in entry:
                raise VmError(f"site {machine.name}: vagrant ssh-config gave no address")
            if entry["hostname"] != str(machine.address):
                raise VmError(
                    f"site {machine.name}: the VM has {entry['hostname']}, not "
                    f"{machine.address} from [vagrant] network {self.vms.settings.network}; "
                    "is another config's VM on that range?"
                )
            key = Path(entry["identityfile"].strip('"')) if "identityfile" in entry else None
            baked = key.parent / HOST_KEY_FILE if key is not None else None
            if baked is not None and baked.is_file():
                algorithm, blob = baked.read_text().split()[:2]
                pinned.append(f"{entry['hostname']} {algorithm} {blob}")
            targets[machine.name] = SshTarget(
                host=entry["hostname"],
                user=entry.get("user"),
                port=int(entry.get("port", 22)),
                key=key,
                accept_new=baked is None or not baked.is_file(),
                known_hosts=self.known_hosts,
            )
        if pinned:
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(pinned) + "\n")
        return targets


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """``Host NAME`` blocks of ``vagrant ssh-config``, keys lowercased."""
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "Host":
            current = hosts.setdefault(value.strip(), {})
        elif current is not None and key:
            current[key.lower()] = value.strip()
    return hosts
