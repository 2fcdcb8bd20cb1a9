"""One step of a local site: the app sandbox and the agent sandbox in the site's network.

Each has its own mount, pid, uts and ipc namespaces (and, for an ordinary user, its own user
namespace), its own uid when fedsim runs as root, no capabilities and the seccomp filter.
The agent drives the app on localhost:5000, the only thing they share. The app's sandbox
holds the app (a writable copy), the site's input and output and the site's secrets; the
agent's holds the relay socket, the token and its launch description. Neither can see the
other's processes or files, so the app cannot read the token, trace the agent or reach the
relay: whatever leaves the site leaves through the agent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fedsim
from fedsim.logs import get_logger
from fedsim.sites.base import AgentLaunch, LineSink, SiteStep, wait_by_polling
from fedsim.sites.limits import Limits, SiteCgroup, format_size, rlimit_prefix, tree_size
from fedsim.sites.sandbox import (
    APP_DIR,
    CONTROL_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    Bind,
    SandboxSpec,
    identity_files,
    running_as_root,
)
from fedsim.sites.sandboxes import (
    SiteProcess,
    chown_tree,
    data_fd,
    start_sandbox,
    write_private,
)
from fedsim.sites.uids import SiteUids

log = get_logger("site")

RELAY_SOCKET = f"{CONTROL_DIR}/relay.sock"
LAUNCH_FILE = f"{CONTROL_DIR}/launch.json"
TOKEN_FILE = f"{CONTROL_DIR}/token"
LAUNCHER_DIR = "/run/fedsim-app"
LAUNCHER = Path(fedsim.__file__).resolve().parent / "agent" / "app_launcher.py"
APP_EXIT_GRACE = 2.0
"""An app that exits on its own gets this long for its agent to report it finished."""
OUTPUT_CHECK_INTERVAL = 2.0


def fedsim_runtime_dirs() -> list[Path]:
    """The trees the agent needs to run: fedsim's Python, its packages and fedsim itself."""
    return [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(fedsim.__file__).resolve().parent.parent,
    ]


def venv_base_dirs(env: Path) -> list[Path]:
    """The interpreter a virtual environment was made from (its ``home``), to bind as well."""
    cfg = env / "pyvenv.cfg"
    if not cfg.is_file():
        return []
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return [Path(value.strip()).parent]
    return []


def launch_bytes(launch: AgentLaunch) -> bytes:
    """Exactly what a local agent reads: the description, with the relay where this
    placement binds it (TLS through the socket kept, for a relay at the end of a forward)."""
    return launch.at_socket(RELAY_SOCKET).to_json().encode()


@dataclass(frozen=True)
class SiteContext:
    """What a local site's steps share: its name, folders, network, limits and identity."""

    name: str
    control_dir: Path
    holder_pid: int | None
    """The process holding the site's network; None where each step's app makes it."""
    limits: Limits
    uids: SiteUids | None
    seccomp_filter: Path
    run_id: str

    def join_network(self) -> list[str]:
        """Into the network of the site's holder."""
        pid = self.holder_pid
        assert pid is not None, "a forked site's agent has a network of its own"
        if running_as_root():
            return ["/usr/bin/nsenter", f"--net=/proc/{pid}/ns/net", "--"]
        return [
            "/usr/bin/nsenter",
            f"--target={pid}",
            "--user",
            "--net",
            "--preserve-credentials",
            "--",
        ]


class LocalRunningSite:
    """A step's two sandboxes; started by ``start``, ended by ``stop``. ``input_dir`` and
    ``app_copy`` are this step's own folders (a fresh copy of the app for every step)."""

    def __init__(self, site: SiteContext, step: SiteStep, input_dir: Path, app_copy: Path) -> None:
        self._site = site
        self._step = step
        self._input_dir = input_dir
        self._app_copy = app_copy
        self.output_dir = step.output_dir
        self._app: SiteProcess | None = None
        self._agent: SiteProcess | None = None
        self._cgroup: SiteCgroup | None = None
        self._app_exited: float | None = None
        self._next_output_check = 0.0
        self._failure: str | None = None
        self._peak_app_rss: int | None = None

    def start(self, launch: AgentLaunch, on_line: LineSink) -> None:
        if self._site.uids is not None and running_as_root():
            self._cgroup = SiteCgroup(self._site.run_id, self._site.name, self._site.limits)
        _say_how_limits_hold(self._cgroup)
        try:
            self._app = self._start_app(launch, on_line)
            self._agent = self._start_agent(launch, on_line)
        except BaseException:
            self.stop()
            raise

    # --- RunningSite -----------------------------------------------------------------------

    def poll(self) -> int | None:
        """The agent's exit code; a site whose app died or broke a limit fails here too."""
        if self._agent is None:
            return None
        code = self._agent.poll()
        if code is not None:
            if code != 0 and self._failure is None:
                self._failure = self._limit_reason()
            return code
        now = time.monotonic()
        limits = self._site.limits
        if now >= self._next_output_check:
            self._next_output_check = now + OUTPUT_CHECK_INTERVAL
            if tree_size(self.output_dir, limits.output) > limits.output:
                self._failure = f"wrote more than its output limit of {format_size(limits.output)}"
                self.stop()
                return 1
        assert self._app is not None
        app_code = self._app.poll()
        if app_code is None:
            return None
        self._app_exited = self._app_exited or now
        if now - self._app_exited < APP_EXIT_GRACE:
            return None  # its agent may still report that it finished
        self._failure = self._limit_reason() or (
            f"the app exited with code {app_code} before it reported finished"
        )
        self.stop()
        return 1

    def wait(self, timeout: float | None = None) -> int | None:
        return wait_by_polling(self.poll, timeout)

    def failure(self) -> str | None:
        """Why the site failed, when fedsim knows better than the agent's last line."""
        return self._failure

    def memory(self) -> dict[str, int]:
        """The app's peak: its main process's resident set (as the agent's is measured) and,
        where a memory cgroup holds the site, the group's peak (page cache included)."""
        usage = {}
        if self._peak_app_rss is not None:
            usage["app_peak_rss_bytes"] = self._peak_app_rss
        peak = self._cgroup.peak_memory() if self._cgroup is not None else None
        if peak is not None:
            usage["app_peak_memory_bytes"] = peak
        return usage

    def stop(self) -> None:
        """Kill both sandboxes; idempotent; returns when nothing of the step is left."""
        self._sample_app_memory()
        # the agent first: an agent whose app vanished under it would log a spurious error
        for sandbox in (self._agent, self._app):
            if sandbox is not None:
                sandbox.kill()
        if self._cgroup is not None:
            if self._failure is None and self._cgroup.oom_killed():
                self._failure = self._limit_reason()
            self._cgroup.remove()

    # --- the two sandboxes -----------------------------------------------------------------

    def _copy_app(self) -> int | None:
        """The step's own copy of the app and its output folder, given to the app's uid
        (returned; None for an ordinary user, whose sites keep the user's)."""
        site, step = self._site, self._step
        shutil.copytree(step.app.app_dir, self._app_copy, symlinks=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        uid = site.uids.app if site.uids is not None else None
        if uid is not None:
            chown_tree(self._app_copy, uid)
            os.chown(self.output_dir, uid, uid)
        return uid

    def _start_app(self, launch: AgentLaunch, on_line: LineSink) -> SiteProcess:
        site, step = self._site, self._step
        uid = self._copy_app()
        fds: list[int] = []
        data: dict[str, int] = {}
        try:
            for dest, text in identity_files(
                site.name, uid if uid is not None else os.getuid()
            ).items():
                data[dest] = data_fd(text.encode())
                fds.append(data[dest])
            if step.env_file is not None:
                # the site's secrets, for its own app only: handed over as bytes, never parsed
                data[f"{LAUNCHER_DIR}/site.env"] = os.open(step.env_file, os.O_RDONLY)
                fds.append(data[f"{LAUNCHER_DIR}/site.env"])
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        env = step.app.env
        spec = SandboxSpec(
            hostname=site.name,
            binds=[
                Bind(self._app_copy, APP_DIR, writable=True),
                Bind(self._input_dir, INPUT_DIR),
                Bind(self.output_dir, OUTPUT_DIR, writable=True),
                Bind(LAUNCHER, f"{LAUNCHER_DIR}/launcher.py"),
            ],
            runtime_dirs=[env, *venv_base_dirs(env)],
            data_fds=data,
            env={"FEDSIM_SHORTEN_WAITS": "1" if launch.shorten_waits else "0"},
            uid=uid,
            new_network=False,
            tmp_bytes=site.limits.tmp,
            chdir=APP_DIR,
        )
        argv = [str(env / "bin" / "python"), f"{LAUNCHER_DIR}/launcher.py"]
        prefix = [
            *(self._cgroup.join_prefix() if self._cgroup is not None else []),
            *rlimit_prefix(site.limits, self._cgroup),
            *site.join_network(),
        ]
        return start_sandbox(
            prefix,
            spec,
            argv,
            seccomp_filter=site.seccomp_filter,
            on_line=on_line,
            tag="app",
            fds=fds,
            thread_name=f"site-{site.name}-app",
        )

    def _start_agent(self, launch: AgentLaunch, on_line: LineSink) -> SiteProcess:
        site = self._site
        uid = site.uids.agent if site.uids is not None else None
        launch_file = site.control_dir / "launch.json"
        token_file = site.control_dir / "token"
        write_private(launch_file, launch_bytes(launch).decode(), uid)
        write_private(token_file, self._step.token, uid)
        identity = identity_files(site.name, uid if uid is not None else os.getuid())
        spec = SandboxSpec(
            hostname=site.name,
            binds=[Bind(launch_file, LAUNCH_FILE), Bind(token_file, TOKEN_FILE)],
            runtime_dirs=fedsim_runtime_dirs(),
            sockets={RELAY_SOCKET: self._step.relay_socket},
            data_fds={dest: data_fd(text.encode()) for dest, text in identity.items()},
            uid=uid,
            new_network=False,
        )
        argv = [sys.executable, "-m", "fedsim.agent", LAUNCH_FILE, TOKEN_FILE]
        return start_sandbox(
            site.join_network(),
            spec,
            argv,
            seccomp_filter=site.seccomp_filter,
            on_line=on_line,
            tag=None,
            fds=list(spec.data_fds.values()),
            thread_name=f"site-{site.name}-agent",
        )

    def _sample_app_memory(self) -> None:
        """The app's main process's high-water mark, read while it still runs."""
        if self._app is None or self._app.init_pid is None or self._peak_app_rss is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            init = self._app.init_pid
            children = Path(f"/proc/{init}/task/{init}/children")
            for pid in children.read_text().split():
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self._peak_app_rss = int(line.split()[1]) * 1024

    def _limit_reason(self) -> str | None:
        if self._cgroup is not None and self._cgroup.oom_killed():
            return f"exceeded its memory limit of {format_size(self._site.limits.memory)}"
        return None


@functools.cache
def _say_how_limits_hold_once(message: str) -> None:
    log.info("%s", message)


def _say_how_limits_hold(cgroup: SiteCgroup | None) -> None:
    """Once per kind of enforcement: a user should know when a limit is only an rlimit."""
    held = sorted(cgroup.dirs) if cgroup is not None else []
    if {"memory", "pids", "cpu"} <= set(held):
        return
    by_rlimit = [n for n, c in (("memory", "memory"), ("processes", "pids")) if c not in held]
    text = f"site limits: {', '.join(by_rlimit)} held by rlimits" if by_rlimit else ""
    if "cpu" not in held:
        text += ("; " if text else "site limits: ") + "cpu not limited (no cpu cgroup here)"
    _say_how_limits_hold_once(text)
