"""The bubblewrap command line that makes one sandbox of a local site.

A sandbox sees the system read-only, the Python runtime it needs read-only, the files its
spec binds, a private ``/tmp`` and ``/etc`` files written for it (never ``shadow``); nothing
else of this machine. It gets its own mount, pid, uts and ipc namespaces; its network
namespace is either its own (loopback only) or the site's, shared with the site's other
sandbox (see ``sites/local_step.py``).

When fedsim runs as root, bwrap runs as root without a user namespace (so it can bind what
root can read) and the command inside starts through ``setpriv``, which takes the site's own
uid, drops every capability and sets ``no_new_privs``: the host sees that uid, not root.
As an ordinary user, bwrap makes a user namespace and the processes keep the user's uid.
Either way the seccomp filter (``sites/seccomp.py``) is loaded before the command runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.errors import SandboxError

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "fonts",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "services",
    "ssl",
    "timezone",
)
"""What programs read from ``/etc``; users, groups and hosts are written for the site,
and nothing that holds a host secret (``shadow``, ``gshadow``, ssh keys) is ever bound."""
ETC_PREFIXES = ("python",)
"""Debian's Pythons read ``/etc/python3.X``."""
INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
APP_DIR = "/app"
CONTROL_DIR = "/run/fedsim"
PASSED_ENV = ("LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""The few host variables a site inherits; everything else (tokens, keys) stays outside."""
SETPRIV = "/usr/bin/setpriv"


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(
            "bubblewrap (bwrap) is not installed; local sites need it. "
            "On Debian or Ubuntu: apt-get install bubblewrap"
        )
    return path


def running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Bind:
    source: Path
    dest: str
    writable: bool = False


@dataclass
class SandboxSpec:
    hostname: str
    binds: Sequence[Bind] = ()
    runtime_dirs: Iterable[Path] = ()
    """Read-only trees the processes inside execute from (Python prefixes, fedsim itself),
    bound at their own paths."""
    sockets: Mapping[str, Path] = field(default_factory=dict)
    """Path inside -> host Unix socket, bound so the sandbox can connect."""
    data_fds: Mapping[str, int] = field(default_factory=dict)
    """Path inside -> a readable fd whose content becomes that (read-only) file; secrets
    travel this way, never through argv or the environment of bwrap itself."""
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None
    """The host uid the command runs as (root only; an ordinary user keeps its own)."""
    seccomp_fd: int | None = None
    new_network: bool = True
    """False: stay in the network namespace bwrap is started in (the site's)."""
    tmp_bytes: int | None = None
    chdir: str = "/"
    dirs: Sequence[str] = ()
    """Empty folders made inside (mount points for what a fork-server's child binds)."""
    sets_up_sites: bool = False
    """The command is a fork-server (``sites/forkserver.py``): it keeps every capability
    bwrap can give and drops them itself, so no ``setpriv`` and no uid even as root."""


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _etc_binds() -> list[str]:
    args = ["--perms", "0755", "--tmpfs", "/etc"]
    for name in sorted(os.listdir("/etc")):
        if name in ETC_ENTRIES or name.startswith(ETC_PREFIXES):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def identity_files(hostname: str, uid: int) -> dict[str, str]:
    """``/etc/passwd``, ``group`` and ``hosts`` as the site sees them: itself and root."""
    gid = uid
    return {
        "/etc/passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"site:x:{uid}:{gid}:{hostname}:/tmp:/usr/sbin/nologin\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "/etc/group": f"root:x:0:\nsite:x:{gid}:\nnogroup:x:65534:\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n",
        "/etc/hostname": f"{hostname}\n",
    }


def _minimal_cover(paths: Iterable[Path]) -> list[Path]:
    """Drop paths already inside another one, so each tree is bound once."""
    unique = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _parents_open(path: Path) -> list[str]:
    """Directories bwrap creates on the way to a bind copy the host's modes; a bind under
    ``/root`` (mode 0700) would be out of reach of the site's uid, so open the way."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if str(parent) == "/" or any(str(parent).startswith(d) for d in SYSTEM_DIRS):
            continue
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def setpriv_prefix(uid: int) -> list[str]:
    """Become ``uid`` with no capability at all and no way to gain one (root only)."""
    return [
        SETPRIV,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def build_command(spec: SandboxSpec, argv: list[str], info_fd: int | None = None) -> list[str]:
    """``info_fd``: bwrap writes ``{"child-pid": N}`` there, N being the sandbox's pid 1.

    Run the result with an empty environment: bwrap's own environment is readable by the
    sandbox at ``/proc/1/environ`` when the sandbox shares its uid.
    """
    root = running_as_root()
    if root and spec.uid is None and not spec.sets_up_sites:
        raise SandboxError("a sandbox started as root needs the site's own uid")
    uid = spec.uid if root and spec.uid is not None else os.getuid()
    args = [
        bwrap_path(),
        *(["--info-fd", str(info_fd)] if info_fd is not None else []),
        *([] if root else ["--unshare-user"]),
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--unshare-net"] if spec.new_network else []),
        "--die-with-parent",
        "--new-session",
        "--hostname",
        spec.hostname,
        "--clearenv",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *(["--size", str(spec.tmp_bytes)] if spec.tmp_bytes else []),
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        *_system_binds(),
        *_etc_binds(),
    ]
    if spec.seccomp_fd is not None:
        args += ["--seccomp", str(spec.seccomp_fd)]
    if spec.sets_up_sites:
        args += ["--cap-add", "ALL"]
    for path in _minimal_cover(spec.runtime_dirs):
        if not any(path.is_relative_to(d) for d in SYSTEM_DIRS):
            args += [*_parents_open(path), "--ro-bind", str(path), str(path)]
    for bind in spec.binds:
        args += [*_parents_open(Path(bind.dest)), "--bind" if bind.writable else "--ro-bind"]
        args += [str(bind.source), bind.dest]
    for dest, host_path in spec.sockets.items():
        args += [*_parents_open(Path(dest)), "--bind", str(host_path), dest]
    # a fork-server's children mount over its files: a file, not a bind of an unlinked one
    data = "--file" if spec.sets_up_sites else "--ro-bind-data"
    for dest, fd in spec.data_fds.items():
        args += [*_parents_open(Path(dest)), "--perms", "0444", data, str(fd), dest]
    for path in spec.dirs:
        args += [*_parents_open(Path(path)), "--perms", "0755", "--dir", path]
    args += ["--remount-ro", "/etc"]  # an ordinary user's sandbox could write its own tmpfs
    for key, value in sandbox_env(spec.env).items():
        args += ["--setenv", key, value]
    args += ["--chdir", spec.chdir, "--"]
    if root and not spec.sets_up_sites:
        args += setpriv_prefix(uid)
    return [*args, *argv]


def sandbox_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a site's process: a few host variables, fixed ones, ``extra``."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "USER": "site",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra)
    return env
