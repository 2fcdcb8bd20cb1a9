"""What one site may use of this machine: memory, processes, CPU, ``/tmp`` and output.

Enforced by the strongest means the machine offers: a cgroup per site (v2 where a subtree
with the controllers can be made, else the v1 memory, pids and cpu hierarchies, which
need root), and rlimits always (per file size for the output; address space and processes
where no cgroup holds them). An unprivileged run on a machine without delegated cgroups
gets rlimits only, and says so.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from fedsim.logs import get_logger

log = get_logger("limits")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_GROUP = "fedsim"
CPU_PERIOD_US = 100_000
UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``"4GiB"``, ``"512 MiB"``, ``"10G"``, ``"1000"`` (bytes); binary units throughout."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :].removesuffix("ib").removesuffix("b")
    if unit not in UNITS or not number:
        raise ValueError(f"not a size: {text!r} (use e.g. '4GiB', '512MiB' or bytes)")
    value = float(number) * UNITS[unit]
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"not a positive size: {text!r}")
    return int(value)


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = UNITS[unit[0].lower()]
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class Limits:
    memory: int
    processes: int
    cpu: float
    tmp: int
    output: int


def _cgroup2_root() -> Path | None:
    """Where the unified (v2) hierarchy is mounted, if it is."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


class SiteCgroup:
    """The cgroups one site's app runs in: a v2 group where the unified hierarchy offers the
    memory and pids controllers to us, else the v1 memory, pids and cpu hierarchies (this
    kind of machine: a hybrid whose v2 tree has only hugetlb). Controllers this machine does
    not give us are left to rlimits (``rlimit_prefix``)."""

    def __init__(self, run_id: str, site: str, limits: Limits) -> None:
        self.limits = limits
        self.version = 2
        self.dirs: dict[str, Path] = self._make_v2(run_id, site)
        if self.dirs:
            return
        self.version = 1
        for controller in ("memory", "pids", "cpu"):
            base = CGROUP_ROOT / controller
            if not (base / "cgroup.procs").is_file():
                continue
            path = base / CGROUP_GROUP / run_id / site
            try:
                path.mkdir(parents=True, exist_ok=True)
                self._configure(controller, path)
            except OSError as exc:
                log.debug("no %s cgroup for %s: %s", controller, site, exc)
                continue
            self.dirs[controller] = path

    def _make_v2(self, run_id: str, site: str) -> dict[str, Path]:
        root = _cgroup2_root()
        if root is None or not os.access(root, os.W_OK):
            return {}
        try:
            offered = set((root / "cgroup.controllers").read_text().split())
        except OSError:
            return {}
        if not {"memory", "pids"} <= offered:
            return {}
        wanted = [c for c in ("memory", "pids", "cpu") if c in offered]
        path = root / CGROUP_GROUP / run_id / site
        try:
            for level in (root, root / CGROUP_GROUP, root / CGROUP_GROUP / run_id):
                level.mkdir(exist_ok=True)
                (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            path.mkdir(exist_ok=True)
            (path / "memory.max").write_text(str(self.limits.memory))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            (path / "pids.max").write_text(str(self.limits.processes))
            if "cpu" in wanted:
                quota = int(self.limits.cpu * CPU_PERIOD_US)
                (path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        except OSError as exc:
            log.debug("no cgroup v2 subtree for %s: %s", site, exc)
            return {}
        return dict.fromkeys(wanted, path)

    def _configure(self, controller: str, path: Path) -> None:
        if controller == "memory":
            (path / "memory.limit_in_bytes").write_text(str(self.limits.memory))
            with contextlib.suppress(OSError):  # no swap accounting on some kernels
                (path / "memory.memsw.limit_in_bytes").write_text(str(self.limits.memory))
        elif controller == "pids":
            (path / "pids.max").write_text(str(self.limits.processes))
        elif controller == "cpu":
            (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(int(self.limits.cpu * CPU_PERIOD_US)))

    @property
    def holds_memory(self) -> bool:
        return "memory" in self.dirs

    @property
    def holds_processes(self) -> bool:
        return "pids" in self.dirs

    def join_prefix(self) -> list[str]:
        """A command prefix that enters the cgroups before anything else runs."""
        if not self.dirs:
            return []
        joins = " && ".join(
            f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs.values()
        )
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "fedsim-site"]

    def join(self, pid: int) -> None:
        """Put ``pid`` (a site's first process, before it starts anything) in the groups."""
        for path in dict.fromkeys(self.dirs.values()):
            (path / "cgroup.procs").write_text(str(pid))

    def oom_killed(self) -> bool:
        path = self.dirs.get("memory")
        if path is None:
            return False
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            control = (path / events).read_text()
        except OSError:
            return False
        fields = dict(line.split() for line in control.splitlines() if len(line.split()) == 2)
        return int(fields.get("oom_kill", "0")) > 0

    def peak_memory(self) -> int | None:
        path = self.dirs.get("memory")
        if path is None:
            return None
        peak = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((path / peak).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        for path in dict.fromkeys(self.dirs.values()):
            with contextlib.suppress(OSError):
                path.rmdir()
            for parent in (path.parent, path.parent.parent):
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty: other runs may still use them


def rlimits(limits: Limits, cgroup: SiteCgroup | None) -> dict[str, int]:
    """The rlimits for what no cgroup holds: a file's size always (output), address space
    and processes when there is no memory or pids cgroup (``prlimit``'s names)."""
    values = {"fsize": limits.output}
    if cgroup is None or not cgroup.holds_memory:
        values["as"] = limits.memory
    if cgroup is None or not cgroup.holds_processes:
        values["nproc"] = limits.processes
    return values


def rlimit_prefix(limits: Limits, cgroup: SiteCgroup | None) -> list[str]:
    """``prlimit`` setting ``rlimits`` for the command it starts."""
    args = [f"--{name}={value}" for name, value in rlimits(limits, cgroup).items()]
    return ["/usr/bin/prlimit", *args, "--"]


def tree_size(path: Path, stop_above: int) -> int:
    """Bytes under ``path`` without following links; stops counting above ``stop_above``."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
            if total > stop_above:
                return total
    return total
