"""A site on this machine: two bubblewrap sandboxes sharing only a loopback network.

Who makes what (the shape the other placements keep):
- this placement makes the site's network namespace (a holder process with loopback
  only), then the **app sandbox** and the **agent sandbox** in it; each has its own mount,
  pid, uts and ipc namespaces (and, for an ordinary user, its own user namespace), its own
  uid when fedsim runs as root, no capabilities and the seccomp filter;
- the agent drives the app on localhost:5000, the only thing they share. The app's
  sandbox holds the app (a writable copy), the site's input and output and the site's
  secrets; the agent's holds the relay socket, the token and its config. Neither can see
  the other's processes or files, so the app cannot read the token, trace the agent or
  reach the relay: whatever leaves the site leaves through the agent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import fedsim
from fedsim.logs import get_logger
from fedsim.processes import spawn_line_reader
from fedsim.safefiles import copy_inputs  # never follows a link below a named input
from fedsim.sites.base import AgentLaunch, LineSink
from fedsim.sites.limits import Limits, SiteCgroup, format_size, rlimit_prefix, tree_size
from fedsim.sites.sandbox import (
    APP_DIR,
    CONTROL_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    Bind,
    SandboxSpec,
    build_command,
    identity_files,
    running_as_root,
)
from fedsim.sites.uids import SiteUids

log = get_logger("site")

RELAY_SOCKET = f"{CONTROL_DIR}/relay.sock"
LAUNCHER_DIR = "/run/fedsim-app"
LAUNCHER = Path(fedsim.__file__).resolve().parent / "agent" / "app_launcher.py"
APP_EXIT_GRACE = 2.0
"""An app that exits on its own gets this long for its agent to report it finished."""
OUTPUT_CHECK_INTERVAL = 2.0
MAX_LINE = 16_384
"""Longer app lines are cut into pieces: an app printing a gigabyte without a newline must
not make fedsim hold it in memory."""
STATUS_ACCESS_LINE = re.compile(
    r"(?:(?:\d{1,3}\.){3}\d{1,3}|::1) - - \[[^\]]*\] "
    r'"GET /api/status HTTP/1\.[01]" \d+ \S+'
)
"""Bottle logs every request; at the agent's poll rate the status polls would drown the log.
Only that record is cut out: another thread's output may share its line (print writes the
text and the newline separately)."""


def _write_private(path: Path, text: str, owner: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(path, owner, owner)


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


def chown_tree(path: Path, uid: int) -> None:
    """Give a tree to ``uid`` without following any link in it."""
    os.lchown(path, uid, uid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)


def _read_info(fd: int) -> int | None:
    with os.fdopen(fd, encoding="utf-8") as info:
        text = info.read()  # written by bwrap right after it made the namespaces
    return json.loads(text)["child-pid"] if text.strip() else None


@dataclass
class _Sandbox:
    """One bwrap process tree: its outer process and the pid 1 inside."""

    process: subprocess.Popen[str]
    init_pid: int | None
    reader: threading.Thread

    def kill(self) -> None:
        # Killing the sandbox's pid 1 kills every process in its pid namespace; bwrap
        # outside then exits. (Killing bwrap first would orphan pid 1 to an init that may
        # never reap it.) --die-with-parent covers a crash of fedsim.
        if self.process.poll() is None and self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)


class LocalSite:
    def __init__(
        self,
        name: str,
        site_dir: Path,
        private_dir: Path,
        relay_socket: Path,
        limits: Limits,
        uids: SiteUids | None,
        seccomp_filter: Path,
        run_id: str,
    ) -> None:
        self.name = name
        self.output_dir = site_dir / "output"
        self.input_dir = private_dir / "input"
        self._private = private_dir
        self._control = private_dir / "control"
        self._relay_socket = relay_socket
        self._limits = limits
        self._uids = uids
        self._seccomp = seccomp_filter
        self._run_id = run_id
        self._holder: subprocess.Popen[str] | None = None
        self._app: _Sandbox | None = None
        self._agent: _Sandbox | None = None
        self._cgroup: SiteCgroup | None = None
        self._app_exited: float | None = None
        self._next_output_check = 0.0
        self._failure: str | None = None
        self._peak_app_rss: int | None = None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._control.mkdir(parents=True, mode=0o700, exist_ok=True)

    # --- the orchestrator's side -----------------------------------------------------------

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        copy_inputs(inputs, self.input_dir, overrides)
        if self._uids is not None:
            chown_tree(self.input_dir, self._uids.app)

    def start(self, launch: AgentLaunch, on_line: LineSink) -> None:
        if self._uids is not None and running_as_root():
            self._cgroup = SiteCgroup(self._run_id, self.name, self._limits)
        _say_how_limits_hold(self._cgroup)
        self._holder = self._start_network()
        try:
            self._app = self._start_app(launch, on_line)
            self._agent = self._start_agent(launch, on_line)
        except BaseException:
            self.stop()
            raise

    def poll(self) -> int | None:
        """The agent's exit code; a site whose app died or broke a limit fails here too."""
        if self._agent is None:
            return None
        code = self._agent.process.poll()
        if code is not None:
            if code != 0 and self._failure is None:
                self._failure = self._limit_reason()
            return code
        now = time.monotonic()
        if now >= self._next_output_check:
            self._next_output_check = now + OUTPUT_CHECK_INTERVAL
            if tree_size(self.output_dir, self._limits.output) > self._limits.output:
                self._failure = (
                    f"wrote more than its output limit of {format_size(self._limits.output)}"
                )
                self.stop()
                return 1
        assert self._app is not None
        app_code = self._app.process.poll()
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
        """Kill both sandboxes and the network; idempotent; returns when nothing is left."""
        self._sample_app_memory()
        # the agent first: an agent whose app vanished under it would log a spurious error
        for sandbox in (self._agent, self._app):
            if sandbox is not None:
                sandbox.kill()
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
        if self._holder is not None:
            self._holder.wait()
            if self._holder.stdout is not None:
                self._holder.stdout.close()
        if self._cgroup is not None:
            if self._failure is None and self._cgroup.oom_killed():
                self._failure = self._limit_reason()
            self._cgroup.remove()

    def collect(self) -> None:
        """The output is bind-mounted into the sandbox: it is already here; give it back to
        the user that runs fedsim."""
        if self._uids is not None:
            chown_tree(self.output_dir, os.getuid())

    # --- the three processes ---------------------------------------------------------------

    def _join_network(self) -> list[str]:
        assert self._holder is not None
        pid = self._holder.pid
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

    def _start_network(self) -> subprocess.Popen[str]:
        """A process that holds the site's network namespace: loopback only, brought up."""
        unshare = ["/usr/bin/unshare", "--net"]
        if not running_as_root():
            unshare += ["--user", "--map-current-user", "--keep-caps"]
        holder = subprocess.Popen(
            [
                "/usr/bin/setpriv",
                "--pdeathsig=KILL",
                *unshare,
                "--",
                "/bin/sh",
                "-c",
                "/usr/sbin/ip link set lo up && echo ready && exec sleep infinity",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={},
            start_new_session=True,
        )
        assert holder.stdout is not None
        first = holder.stdout.readline().strip()
        if first != "ready":
            holder.kill()
            holder.wait()
            raise OSError(f"could not make the network of site {self.name}: {first}")
        return holder

    def _spawn(
        self,
        prefix: list[str],
        spec: SandboxSpec,
        argv: list[str],
        on_line: LineSink,
        tag: str | None,
        fds: Sequence[int],
    ) -> _Sandbox:
        """Start one sandbox; ``fds`` (its data files) are handed over and closed here."""
        info_read, info_write = os.pipe()
        seccomp = os.open(self._seccomp, os.O_RDONLY)
        try:
            spec.seccomp_fd = seccomp
            process = spawn_line_reader(
                [*prefix, *build_command(spec, argv, info_fd=info_write)],
                pass_fds=(info_write, seccomp, *fds),
                env={},  # bwrap's own environment is readable at /proc/1/environ
                start_new_session=True,  # Ctrl-C reaches the orchestrator only
            )
        finally:
            for fd in (info_write, seccomp, *fds):
                os.close(fd)
        init_pid = _read_info(info_read)
        reader = threading.Thread(
            target=self._pump, args=(process, on_line, tag), name=f"site-{self.name}", daemon=True
        )
        reader.start()
        return _Sandbox(process, init_pid, reader)

    @staticmethod
    def _pump(process: subprocess.Popen[str], on_line: LineSink, tag: str | None) -> None:
        stream: IO[str] | None = process.stdout
        assert stream is not None
        if tag is None:
            for line in stream:
                on_line(line)
            return
        for piece in iter(lambda: stream.readline(MAX_LINE), ""):
            text = STATUS_ACCESS_LINE.sub("", piece).rstrip("\n")
            if text.strip():
                on_line(f"{tag}\tINFO\t{text}")

    def _start_app(self, launch: AgentLaunch, on_line: LineSink) -> _Sandbox:
        app_copy = self._private / "app"
        shutil.rmtree(app_copy, ignore_errors=True)
        shutil.copytree(launch.app_dir, app_copy, symlinks=True)
        uid = self._uids.app if self._uids is not None else None
        if uid is not None:
            chown_tree(app_copy, uid)
            os.chown(self.output_dir, uid, uid)
        fds: list[int] = []
        data: dict[str, int] = {}
        for dest, text in identity_files(
            self.name, uid if uid is not None else os.getuid()
        ).items():
            data[dest] = _data_fd(text.encode())
            fds.append(data[dest])
        if launch.env_file is not None:
            # the site's secrets, for its own app only: handed over as bytes, never parsed here
            data[f"{LAUNCHER_DIR}/site.env"] = os.open(launch.env_file, os.O_RDONLY)
            fds.append(data[f"{LAUNCHER_DIR}/site.env"])
        spec = SandboxSpec(
            hostname=self.name,
            binds=[
                Bind(app_copy, APP_DIR, writable=True),
                Bind(self.input_dir, INPUT_DIR),
                Bind(self.output_dir, OUTPUT_DIR, writable=True),
                Bind(LAUNCHER, f"{LAUNCHER_DIR}/launcher.py"),
            ],
            runtime_dirs=[launch.app_env, *venv_base_dirs(launch.app_env)],
            data_fds=data,
            env={"FEDSIM_SHORTEN_WAITS": "1" if launch.config.get("shorten_waits") else "0"},
            uid=uid,
            new_network=False,
            tmp_bytes=self._limits.tmp,
            chdir=APP_DIR,
        )
        argv = [str(launch.app_env / "bin" / "python"), f"{LAUNCHER_DIR}/launcher.py"]
        prefix = [
            *(self._cgroup.join_prefix() if self._cgroup is not None else []),
            *rlimit_prefix(self._limits, self._cgroup),
            *self._join_network(),
        ]
        return self._spawn(prefix, spec, argv, on_line, "app", fds)

    def _start_agent(self, launch: AgentLaunch, on_line: LineSink) -> _Sandbox:
        uid = self._uids.agent if self._uids is not None else None
        config = {
            **launch.config,
            "relay_socket": RELAY_SOCKET,
            "token_file": f"{CONTROL_DIR}/token",
        }
        _write_private(self._control / "agent.json", json.dumps(config), uid)
        _write_private(self._control / "token", launch.token, uid)
        spec = SandboxSpec(
            hostname=self.name,
            binds=[
                Bind(self._control / "agent.json", f"{CONTROL_DIR}/agent.json"),
                Bind(self._control / "token", f"{CONTROL_DIR}/token"),
            ],
            runtime_dirs=fedsim_runtime_dirs(),
            sockets={RELAY_SOCKET: self._relay_socket},
            data_fds={
                dest: _data_fd(text.encode())
                for dest, text in identity_files(
                    self.name, uid if uid is not None else os.getuid()
                ).items()
            },
            uid=uid,
            new_network=False,
        )
        argv = [sys.executable, "-m", "fedsim.agent", f"{CONTROL_DIR}/agent.json"]
        fds = list(spec.data_fds.values())
        return self._spawn(self._join_network(), spec, argv, on_line, None, fds)

    def _sample_app_memory(self) -> None:
        """The app's main process's high-water mark, read while it still runs."""
        if self._app is None or self._app.init_pid is None or self._peak_app_rss is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self._app.init_pid}/task/{self._app.init_pid}/children")
            for pid in children.read_text().split():
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self._peak_app_rss = int(line.split()[1]) * 1024

    def _limit_reason(self) -> str | None:
        if self._cgroup is not None and self._cgroup.oom_killed():
            return f"exceeded its memory limit of {format_size(self._limits.memory)}"
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


def _data_fd(data: bytes) -> int:
    """A readable fd holding ``data`` (bwrap copies it into the sandbox)."""
    read, write = os.pipe()
    if len(data) > 60_000:
        os.close(read)
        os.close(write)
        raise ValueError("data for a sandbox file is too large for a pipe")
    os.write(write, data)
    os.close(write)
    return read
