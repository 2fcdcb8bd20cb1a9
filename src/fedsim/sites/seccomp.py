"""The system calls a site may not make, compiled once per run into a BPF program for bwrap.

Namespaces, uids and dropped capabilities already keep a site's processes in their box;
the filter takes away the kernel interfaces that an escape would start from even so:
mounting, tracing another process, new namespaces (a user namespace gives back every
capability inside it), keyrings, BPF, kernel modules, kexec, and the host-wide clock.
A refused call fails with EPERM, as on a locked-down container host, so a well-behaved
program that probes for a feature carries on; ``clone3`` answers ENOSYS so that the C
library falls back to ``clone``, whose namespace flags the filter can inspect.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fedsim.errors import SandboxError

REFUSED = (
    # mounts and the filesystem tree
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    # other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # namespaces
    "unshare",
    "setns",
    # kernel interfaces
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "iopl",
    "ioperm",
    "uselib",
    "vhangup",
    "lookup_dcookie",
    # the host's clock
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
)
"""Refused with EPERM."""

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
"""``clone`` with any of these makes a namespace: refused, like ``unshare``."""

TIOCSTI = 0x5412
"""Pushing characters into a terminal's input: a classic way out of a sandbox."""


def _library():  # type: ignore[no-untyped-def]
    try:
        import pyseccomp
    except ImportError as exc:  # pragma: no cover - a dependency of fedsim
        raise SandboxError("pyseccomp is missing: pip install pyseccomp") from exc
    try:
        pyseccomp.get_api()
    except OSError as exc:
        raise SandboxError(
            "libseccomp is not installed; local sites need it. "
            "On Debian or Ubuntu: apt-get install libseccomp2"
        ) from exc
    return pyseccomp


def write_filter(path: Path) -> Path:
    """Compile the site filter into ``path`` (a BPF program, as ``bwrap --seccomp`` reads)."""
    sc = _library()
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    refuse = sc.ERRNO(errno.EPERM)
    for name in REFUSED:
        try:
            flt.add_rule(refuse, name)
        except (ValueError, RuntimeError, OSError):
            continue  # a call this architecture does not have
    for flag in NAMESPACE_FLAGS.values():
        flt.add_rule(refuse, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(refuse, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        flt.export_bpf(handle)
    return path
