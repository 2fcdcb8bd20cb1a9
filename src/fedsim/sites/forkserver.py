"""A fork-server per app environment, and the apps it forks (``forkserver_main.py`` is what
runs inside).

The server runs in a bubblewrap sandbox of its own: the system and the app environment
read-only; writable, the run's fork folder (the sites' app copies and inputs, never their
control files) and the run directory's site folders (their outputs); no network, no relay,
no token. As root, bubblewrap starts it as root only so that it can leave ``/proc`` fully
visible; it then becomes the run's server uid and makes a user namespace into which fedsim
maps the run's block of uids (``uids.py``), so that it can give each site its own uid while
being no one on the host. As an ordinary user, bubblewrap's user namespace (with its
capabilities kept) is the server's.

fedsim talks to the server over a ``SOCK_SEQPACKET`` socket pair (the protocol is in
``forkserver_main.py``); each forked app reports on a socket of its own, which tells fedsim
the pid of the site's pid 1 as this machine sees it (``SCM_CREDENTIALS``): fedsim puts it in
the site's cgroup, and killing it ends the site. That pid 1 also makes the agent's
connections to the app, in the site's network (``spawn_app``'s dialer).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fedsim.errors import SandboxError
from fedsim.logs import get_logger
from fedsim.processes import spawn_line_reader
from fedsim.sites.base import LineSink
from fedsim.sites.limits import SiteCgroup
from fedsim.sites.sandbox import (
    APP_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    Bind,
    SandboxSpec,
    build_command,
    identity_files,
)
from fedsim.sites.sandboxes import data_fd, start_reader

log = get_logger("site")

SERVER_SCRIPT = Path(__file__).resolve().with_name("forkserver_main.py")
SERVER_DIR = "/run/fedsim-fork"
SITES_DIR = "/run/fedsim-sites"
OUTPUTS_DIR = "/run/fedsim-outputs"
APP_RUN_DIR = "/run/fedsim-app"
START_TIMEOUT = 180.0
"""The server imports numpy, pandas and the engine; a busy machine may take a while."""
KILL_TIMEOUT = 10.0


def _receive(sock: socket.socket, timeout: float | None) -> tuple[bytes, int | None]:
    """One datagram and the sender's pid as this machine sees it (``SO_PASSCRED`` is set)."""
    sock.settimeout(timeout)
    message, ancillary, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    return message, pid


def _credentials_pair() -> tuple[socket.socket, socket.socket]:
    """(fedsim's end, which learns the sender's pid, the other end)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return mine, theirs


class ForkedApp:
    """A site's app forked by the server: ``init_pid`` is the site's pid 1 (the app is its
    only child); ``poll`` and ``kill`` as for a sandbox process."""

    def __init__(self, status: socket.socket, init_pid: int, reader: threading.Thread) -> None:
        self._status = status
        self.init_pid: int | None = init_pid
        self._pidfd = os.pidfd_open(init_pid)
        self.reader = reader
        self._code: int | None = None

    def poll(self) -> int | None:
        if self._code is None:
            self._status.setblocking(False)
            try:
                message = self._status.recv(64)
            except BlockingIOError:
                return None
            self._set_code(message)
        return self._code

    def _set_code(self, message: bytes) -> None:
        """``exit N`` from the site's pid 1; nothing when it was killed."""
        text = message.decode(errors="replace")
        self._code = int(text.split()[1]) if text.startswith("exit ") else 128 + signal.SIGKILL

    def kill(self) -> None:
        """Kill the site's pid 1, which ends every process of the site; idempotent (a step
        is stopped more than once, and a pidfd closed twice could close another's fd)."""
        if self._pidfd < 0:
            return
        if self._code is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            try:
                self._status.settimeout(KILL_TIMEOUT)
                self._set_code(self._status.recv(64))
            except OSError:
                self._code = 128 + signal.SIGKILL
        self.reader.join(timeout=5)
        self._status.close()
        os.close(self._pidfd)
        self._pidfd = -1


class ForkingServer:
    """A server process in a bubblewrap sandbox that forks on request (an app environment's,
    below, or the run's agent server, ``agent_forkserver.py``); ``close`` ends it and every
    process it forked."""

    def __init__(self, name: str, uid_block: tuple[int, int, int] | None = None) -> None:
        self._name = name
        self._uid_block = uid_block
        self._lock = threading.Lock()
        self._control, self._theirs = _credentials_pair()

    def _launch(self, spec: SandboxSpec, argv: list[str], data: dict[str, int]) -> None:
        """Start ``argv`` (which names ``self._theirs``) in ``spec``'s sandbox and wait for its
        ``ready``; ``data`` (the spec's data files) are handed over and closed here."""
        command = build_command(spec, argv)
        started: list[subprocess.Popen[str]] = []
        ready = threading.Event()
        pass_fds = (self._theirs.fileno(), *data.values())

        def keep() -> None:
            """Start the server and stay until it ends: bwrap dies with this thread."""
            try:
                process = spawn_line_reader(command, pass_fds=pass_fds, env={})
                started.append(process)
            finally:
                ready.set()
            assert process.stdout is not None
            with process.stdout:
                for line in process.stdout:
                    log.info("%s", line.rstrip(), extra={"component": "fork-server"})
            process.wait()

        self._keeper = threading.Thread(target=keep, name=f"fork-server-{self._name}", daemon=True)
        self._keeper.start()
        ready.wait()
        self._theirs.close()
        for fd in data.values():
            os.close(fd)
        if not started:
            self._control.close()
            raise SandboxError(f"could not start the fork-server of {self._name}")
        self._process = started[0]
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        uid_block = self._uid_block
        message, pid = _receive(self._control, START_TIMEOUT)
        if message == b"map" and uid_block is not None and pid is not None:
            first, count, _server = uid_block
            for name in ("uid_map", "gid_map"):
                Path(f"/proc/{pid}/{name}").write_text(f"{first} {first} {count}\n")
            self._control.send(b"mapped")
            message, _pid = _receive(self._control, START_TIMEOUT)
        if message != b"ready":
            raise SandboxError(
                f"the fork-server of {self._name} did not start"
                + (f" ({message.decode(errors='replace')})" if message else "")
                + "; see its lines in the log"
            )
        log.debug("fork-server of %s ready", self._name)

    def spawn(
        self,
        site: str,
        request: dict[str, Any],
        fds: Sequence[int],
        *,
        cgroup: SiteCgroup | None,
        on_line: LineSink,
        thread_name: str,
        what: str = "app",
        go: bytes = b"go",
    ) -> ForkedApp:
        """Fork one site's app (``request`` as ``forkserver_main.py`` reads it) or agent
        (``what``); ``fds`` (an app's end of its site's dialer and secrets file, see
        ``spawn_app``; an agent's end of the dialer) are handed over and closed here. ``go``
        answers the child's ``ready``: an agent's token travels so, to the sandboxed child
        only. An agent writes fedsim's own line format, an app raw lines (``start_reader``'s
        tag)."""
        status, theirs = _credentials_pair()
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                socket.send_fds(
                    self._control,
                    [json.dumps(request).encode()],
                    [theirs.fileno(), write_end, *fds],
                )
        finally:
            for fd in (write_end, *fds):
                os.close(fd)
            theirs.close()
        stream: IO[str] = open(  # noqa: SIM115 - the reader thread owns it
            read_end, encoding="utf-8", errors="replace", buffering=1
        )
        reader = start_reader(stream, on_line, "app" if what == "app" else None, thread_name)
        try:
            message, pid = _receive(status, START_TIMEOUT)
            if message != b"ready" or pid is None:
                said = message.decode(errors="replace").removeprefix("error ")
                raise SandboxError(
                    f"site {site}: the fork-server could not start its {what}: "
                    + (said or "the server ended")
                )
            if cgroup is not None:
                cgroup.join(pid)
            status.send(go)
        except BaseException:
            status.close()
            reader.join(timeout=5)
            raise
        return ForkedApp(status, pid, reader)

    def close(self) -> None:
        """Hang up: the server exits, and with it (its pid namespace's end) every site."""
        self._control.close()
        try:
            self._process.wait(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._keeper.join(timeout=5)


class ForkServer(ForkingServer):
    """One app environment's server (see the module docstring)."""

    def __init__(
        self,
        env: Path,
        runtime_dirs: Sequence[Path],
        sites_dir: Path,
        outputs_dir: Path,
        seccomp_filter: Path,
        launcher: Path,
        uid_block: tuple[int, int, int] | None,
    ) -> None:
        """``sites_dir`` holds ``<site>/step-N/{app,input}``, ``outputs_dir`` the sites'
        output folders (the run directory's); ``uid_block``: (first uid, count, the server's
        uid) as root, else None."""
        super().__init__(str(env), uid_block)
        self.outputs_dir = outputs_dir.resolve()
        server_uid = None if uid_block is None else uid_block[2]
        identity = identity_files("fedsim-fork", server_uid or os.getuid())
        data = {dest: data_fd(text.encode()) for dest, text in identity.items()}
        data[f"{SERVER_DIR}/seccomp.bpf"] = os.open(seccomp_filter, os.O_RDONLY)
        spec = SandboxSpec(
            hostname="fedsim-fork",
            binds=[
                Bind(sites_dir, SITES_DIR, writable=True),
                Bind(outputs_dir, OUTPUTS_DIR, writable=True),
                Bind(SERVER_SCRIPT, f"{SERVER_DIR}/forkserver_main.py"),
                Bind(launcher, f"{SERVER_DIR}/app_launcher.py"),
            ],
            runtime_dirs=runtime_dirs,
            data_fds=data,
            dirs=(APP_DIR, INPUT_DIR, OUTPUT_DIR, APP_RUN_DIR),
            sets_up_sites=True,
        )
        argv = [
            str(env / "bin" / "python"),
            f"{SERVER_DIR}/forkserver_main.py",
            str(self._theirs.fileno()),
            "-" if server_uid is None else str(server_uid),
        ]
        self._launch(spec, argv, data)

    def spawn_app(
        self,
        site: str,
        request: dict[str, Any],
        secrets: int | None,
        *,
        cgroup: SiteCgroup | None,
        on_line: LineSink,
        thread_name: str,
    ) -> tuple[ForkedApp, socket.socket]:
        """Fork one site's app (``request`` as ``forkserver_main.py`` reads it); ``secrets``,
        the site's secrets file if any, is handed over and closed here. Returns the app and
        fedsim's end of the site's dialer, for its agent (``agent/app_dialer.py``)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.detach(), *([] if secrets is None else [secrets])]
        try:
            app = self.spawn(
                site, request, fds, cgroup=cgroup, on_line=on_line, thread_name=thread_name
            )
        except BaseException:
            mine.close()
            raise
        return app, mine
