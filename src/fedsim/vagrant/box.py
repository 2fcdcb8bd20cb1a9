"""``fedsim vm build-box``: a vagrant-libvirt box made from Debian's packages, offline-ready.

Why build one: tests and air-gapped users must not depend on a box registry, and a VM site
needs little (sshd, the Python that fedsim's wheels are built for, bubblewrap for the
sandbox). debootstrap fetches the packages from the machine's own Debian mirror (the one apt
uses) at build time; the VMs made from the box never download anything.

The box boots its kernel directly (no boot loader, no partition table): ``box.img`` is a
qcow2 of one ext4 file system, and the box's own Vagrantfile names the kernel and initrd
that sit beside it. It holds a login key made for this box (Vagrant is told not to replace
it) and a host key made for it, whose public half (``fedsim_host_key.pub``) fedsim pins
before the first connection to any VM of the box.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsim.appenv import cache_root
from fedsim.errors import VmError
from fedsim.logs import get_logger
from fedsim.vagrant.control import HOST_KEY_FILE

log = get_logger("vagrant")

DEFAULT_BOX = "fedsim/debian12"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOGIN_KEY_FILE = "fedsim_login_key"
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "openssh-server",
    "python3",
    "bubblewrap",
    "libseccomp2",
    "sudo",
    "iproute2",
    "netbase",
)
"""What a VM site needs: a kernel and init, sshd, the Python for fedsim's wheels, bwrap
and libseccomp for the sandbox, sudo for Vagrant's own set-up (the hostname)."""
DISK_SIZE = "4G"
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
BOX_VAGRANTFILE = f"""# fedsim's box: direct kernel boot, and the box's own login key
Vagrant.configure("2") do |config|
  config.ssh.insert_key = false
  config.ssh.private_key_path = File.join(__dir__, "{LOGIN_KEY_FILE}")
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinuz")
    libvirt.initrd = File.join(__dir__, "initrd.img")
    libvirt.cmd_line = "{KERNEL_ARGS}"
  end
end
"""
NETWORK_UNIT = "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else Debian's own."""
    texts = []
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            try:
                texts.append(path.read_text())
            except OSError:
                continue
    for text in texts:
        for match in re.finditer(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            uri = match.group(1)
            if not uri.rstrip("/").endswith("-security"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _run(*argv: str, timeout: float = 1800) -> None:
    """A build step; a failure is a VmError with the end of what it printed."""
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise VmError(
            f"{argv[0]} is not installed; building a box needs debootstrap, e2fsprogs, "
            "qemu-utils, openssh-client and vagrant"
        ) from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise VmError(f"building the box: {argv[0]} failed (exit {result.returncode}):\n{tail}")


@dataclass(frozen=True)
class BuiltBox:
    name: str
    seconds: float


def _customise(root: Path, out: Path) -> None:
    """The Debian tree made a VM site: network by DHCP, a vagrant user with this box's
    login key, this box's host key, and the kernel and initrd copied out for direct boot."""
    (root / "etc/hostname").write_text("fedsim\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 fedsim\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,noatime 0 1\n")
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/80-eth0.network").write_text(NETWORK_UNIT)
    _run("chroot", str(root), "systemctl", "enable", "systemd-networkd")
    _run("chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "vagrant")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    _run(
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "fedsim-box",
        "-f",
        str(out / LOGIN_KEY_FILE),
    )
    ssh_dir = root / "home/vagrant/.ssh"
    ssh_dir.mkdir(mode=0o700)
    shutil.copy(out / f"{LOGIN_KEY_FILE}.pub", ssh_dir / "authorized_keys")
    (ssh_dir / "authorized_keys").chmod(0o600)
    _run("chroot", str(root), "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fedsim-box", "-f", str(host_key))
    shutil.copy(host_key.with_suffix(".pub"), out / HOST_KEY_FILE)
    (root / "etc/ssh/sshd_config.d/fedsim.conf").write_text("UseDNS no\n")
    shutil.copy(next((root / "boot").glob("vmlinuz-*")), out / "vmlinuz")
    shutil.copy(next((root / "boot").glob("initrd.img-*")), out / "initrd.img")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / cache).glob("*"):
            if item.is_file():
                item.unlink()


def build_box(
    name: str = DEFAULT_BOX,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    progress: Callable[[str], None] = log.info,
) -> BuiltBox:
    """Build the box and add it to Vagrant (replacing one of that name). Needs root."""
    if os.geteuid() != 0:
        raise VmError("fedsim vm build-box needs root (debootstrap and chroot)")
    start = time.monotonic()
    work = cache_root() / "box-build" / name.replace("/", "-")
    shutil.rmtree(work, ignore_errors=True)
    root, out = work / "root", work / "box"
    out.mkdir(parents=True, mode=0o700)
    try:
        mirror = mirror or apt_mirror()
        progress(f"debootstrap {suite} from {mirror}")
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(root),
            mirror,
        )
        progress("configuring the system")
        _customise(root, out)
        progress("making the disk image")
        raw = work / "root.raw"
        _run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), DISK_SIZE)
        _run("qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(out / "box.img"))
        raw.unlink()
        metadata = {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
        (out / "metadata.json").write_text(json.dumps(metadata) + "\n")
        (out / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        box_file = work / "fedsim.box"
        with tarfile.open(box_file, "w") as tar:
            for item in sorted(out.iterdir()):
                tar.add(item, arcname=item.name)
        progress(f"adding the box to Vagrant as {name}")
        _run("vagrant", "box", "add", "--force", "--name", name, str(box_file))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuiltBox(name, time.monotonic() - start)


def box_installed(name: str = DEFAULT_BOX) -> bool:
    """Whether Vagrant has a libvirt box of this name (``vagrant box list``)."""
    try:
        result = subprocess.run(
            ["vagrant", "box", "list", "--machine-readable"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"},
        )
    except FileNotFoundError:
        return False
    names = [line.split(",")[3] for line in result.stdout.splitlines() if ",box-name," in line]
    return name in names
