"""The bubblewrap command line that makes one local site.

A site sees the system read-only, the Python runtimes it needs read-only, its own input,
its own output, and a Unix socket to the relay; nothing else of this machine. It gets its
own mount, network (loopback only), pid, uts, ipc and, when not root, user namespaces.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.errors import SandboxError

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
APP_DIR = "/app"
CONTROL_DIR = "/run/fedsim"
PASSED_ENV = ("LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""The few host variables a site inherits; everything else (tokens, keys) stays outside."""


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(
            "bubblewrap (bwrap) is not installed; local sites need it. "
            "On Debian or Ubuntu: apt-get install bubblewrap"
        )
    return path


@dataclass
class SandboxSpec:
    hostname: str
    input_dir: Path
    output_dir: Path
    app_dir: Path
    runtime_dirs: Iterable[Path]
    """Read-only trees the processes inside execute from (Python prefixes, fedsim itself)."""
    control_files: Mapping[str, Path] = field(default_factory=dict)
    """Name inside CONTROL_DIR -> host file, bound read-only (agent config, token, env file)."""
    sockets: Mapping[str, Path] = field(default_factory=dict)
    """Name inside CONTROL_DIR -> host Unix socket, bound so the site can connect."""
    env: Mapping[str, str] = field(default_factory=dict)


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _minimal_cover(paths: Iterable[Path]) -> list[Path]:
    """Drop paths already inside another one, so each tree is bound once."""
    unique = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def build_command(spec: SandboxSpec, argv: list[str], info_fd: int | None = None) -> list[str]:
    """``info_fd``: bwrap writes ``{"child-pid": N}`` there, N being the sandbox's pid 1."""
    args = [
        bwrap_path(),
        *(["--info-fd", str(info_fd)] if info_fd is not None else []),
        "--unshare-all",  # user (when possible), ipc, pid, net, uts, cgroup
        "--die-with-parent",
        "--new-session",
        "--hostname",
        spec.hostname,
        "--clearenv",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        *_system_binds(),
    ]
    for path in _minimal_cover(spec.runtime_dirs):
        if not any(path.is_relative_to(d) for d in SYSTEM_DIRS):
            args += ["--ro-bind", str(path), str(path)]
    args += [
        "--ro-bind",
        str(spec.app_dir),
        APP_DIR,
        "--ro-bind",
        str(spec.input_dir),
        INPUT_DIR,
        "--bind",
        str(spec.output_dir),
        OUTPUT_DIR,
        "--dir",
        CONTROL_DIR,
    ]
    for name, host_path in spec.control_files.items():
        args += ["--ro-bind", str(host_path), f"{CONTROL_DIR}/{name}"]
    for name, host_path in spec.sockets.items():
        args += ["--bind", str(host_path), f"{CONTROL_DIR}/{name}"]
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(spec.env)
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", APP_DIR, "--", *argv]
    return args
