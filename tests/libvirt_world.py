"""libvirtd for the VM tests, in network and mount namespaces of the test's own.

Why: VM sites must be tested with real VMs (libvirt, QEMU, Vagrant), but a test may touch
neither the machine's network nor its libvirt. So the test starts its own ``virtlogd`` and
``libvirtd`` in a network namespace it created (every bridge, dnsmasq and QEMU of the VMs
lives there: nothing can reach a real interface) and a mount namespace where libvirt's
folders (/etc/libvirt, /var/lib/libvirt with its disk images, /var/log/libvirt,
/var/cache/libvirt) are the test's own and /run is fresh. fedsim and Vagrant then run inside
both (:meth:`LibvirtWorld.inside`). Closing kills every process of the namespace (libvirtd,
dnsmasq, every QEMU) and removes the folder: nothing stays on the machine.

libvirt's config is the machine's, with QEMU running as root without a security driver
(the box's kernel is read from the test's cache, under root's home) and without the
``default`` network (it would be a NAT network no test asked for).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.sshd_hosts import (
    FOLDER_PREFIX,
    PREFIX,
    STOP_TIMEOUT,
    SshHostsError,
    delete_netns,
    die_with_parent,
    run_command,
    sweep_stale,
)

LIBVIRT_FOLDERS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
QEMU_SETTINGS = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
START_TIMEOUT = 60.0


class LibvirtWorld:
    """A private libvirtd (see the module docstring); use as a context manager."""

    def __init__(self) -> None:
        sweep_stale()
        self.namespace = f"{PREFIX}{os.getpid()}-libvirt"
        self.folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-libvirt-"))
        self.folder.chmod(0o755)  # libvirt's dnsmasq runs as its own user and reads in there
        self._holder: subprocess.Popen[str] | None = None

    def __enter__(self) -> LibvirtWorld:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        for name in LIBVIRT_FOLDERS:
            (self.folder / name).mkdir()
        shutil.copytree("/etc/libvirt", self.folder / "etc", dirs_exist_ok=True, symlinks=True)
        networks = self.folder / "etc" / "qemu" / "networks"
        for xml in [*networks.glob("*.xml"), *networks.glob("autostart/*")]:
            xml.unlink()
        with (self.folder / "etc" / "qemu.conf").open("a") as conf:
            conf.write("\n" + QEMU_SETTINGS)
        run_command("ip", "netns", "add", self.namespace)
        run_command("ip", "-n", self.namespace, "link", "set", "lo", "up")
        binds = "; ".join(
            f"mount --bind {self.folder / name} {target}"
            for name, target in LIBVIRT_FOLDERS.items()
        )
        script = (
            f"set -e; {binds}; mount -t tmpfs -o mode=755 tmpfs /run; "
            "mkdir -p /run/libvirt /run/lock; virtlogd -d; libvirtd -d; "
            "echo ready; exec sleep infinity"
        )
        self._holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            raise SshHostsError(f"libvirtd did not start: {self._holder.stderr.read()[-2000:]}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            check = subprocess.run(
                self.inside(["virsh", "-c", "qemu:///system", "list"]),
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SshHostsError(f"libvirtd does not answer: {check.stderr.strip()}")
            time.sleep(0.5)

    def inside(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """``argv`` run in the world's network and mount namespaces."""
        assert self._holder is not None
        wd = [f"--wd={cwd}"] if cwd is not None else [f"--wd={Path.cwd()}"]
        return ["nsenter", "--target", str(self._holder.pid), "--mount", "--net", *wd, *argv]

    def virsh(self, *args: str) -> str:
        result = subprocess.run(
            self.inside(["virsh", "-c", "qemu:///system", *args]),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout

    def close(self) -> str | None:
        """Every process of the world killed, its namespace and folder removed; what could
        not be removed, or None."""
        problem = delete_netns(self.namespace, time.monotonic() + STOP_TIMEOUT)
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.communicate(timeout=STOP_TIMEOUT)  # reaped, its pipes closed
        shutil.rmtree(self.folder, ignore_errors=True)
        return problem


@contextlib.contextmanager
def libvirt_world() -> Iterator[LibvirtWorld]:
    with LibvirtWorld() as world:
        yield world
