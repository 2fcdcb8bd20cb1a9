"""The run's agent fork-server (as root), and the agents it forks into forked sites
(``agent_forkserver_main.py`` is what runs inside; ``docs/forked-agents.md`` the design).

The server's sandbox holds the system and fedsim's runtime read-only, the seccomp filter,
and placeholders its children mount over (``/etc``'s identity files, the relay's socket);
no network, no site's folder, no token. Each agent gets, on the request fedsim sends, the
site's network (``/proc/<site pid 1>/ns/net``, opened here) and the relay's socket (a
detached mount of it); its token only after it has become the site's agent uid and loaded
the filter. An ordinary user's agents start as before (``local_step.py``): joining the
site's network there needs the app fork-server's user namespace, which only ``nsenter``
into a fresh process gives.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from fedsim.sites.base import LineSink
from fedsim.sites.forkserver import ForkedApp, ForkingServer
from fedsim.sites.sandbox import Bind, SandboxSpec, identity_files, sandbox_env
from fedsim.sites.sandboxes import data_fd

SERVER_DIR = "/run/fedsim-agents"
AGENT_RUN_DIR = "/run/fedsim-agent"
SYS_OPEN_TREE = 428  # the same number on every architecture (Linux 5.2 on)
OPEN_TREE_CLONE = 1
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)


def detached_mount(path: Path) -> int:
    """A descriptor of a new mount of ``path`` that belongs to no namespace yet: a child in
    another mount namespace can attach it (``move_mount``), which a bind of a descriptor
    opened here cannot."""
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path), OPEN_TREE_CLONE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return int(fd)


class AgentForkServer(ForkingServer):
    """One per run; ``spawn_agent`` forks a site's agent, ``close`` ends them all."""

    def __init__(self, runtime_dirs: list[Path], seccomp_filter: Path, relay_socket: str) -> None:
        """``relay_socket``: where in an agent's sandbox its launch description puts the
        relay (each agent's own bind of the run's socket)."""
        super().__init__("agents")
        self._relay_socket = relay_socket
        placeholders = {**identity_files("fedsim-agents", 0), relay_socket: ""}
        data = {dest: data_fd(text.encode()) for dest, text in placeholders.items()}
        spec = SandboxSpec(
            hostname="fedsim-agents",
            binds=[Bind(seccomp_filter, f"{SERVER_DIR}/seccomp.bpf")],
            runtime_dirs=runtime_dirs,
            data_fds=data,
            dirs=(AGENT_RUN_DIR,),
            sets_up_sites=True,
        )
        argv = [
            sys.executable,
            "-m",
            "fedsim.sites.agent_forkserver_main",
            str(self._theirs.fileno()),
        ]
        self._launch(spec, argv, data)

    def spawn_agent(
        self,
        site: str,
        *,
        uid: int,
        launch: str,
        token: str,
        network_pid: int,
        relay_socket: Path,
        on_line: LineSink,
    ) -> ForkedApp:
        """Fork ``site``'s agent as ``uid`` into the network of ``network_pid`` (the site's
        pid 1); ``launch`` is its description as the agent reads it."""
        request = {
            "hostname": site,
            "uid": uid,
            "identity": {Path(d).name: text for d, text in identity_files(site, uid).items()},
            "env": sandbox_env({}),
            "launch": launch,
            "relay_socket": self._relay_socket,
        }
        network = os.open(f"/proc/{network_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            relay = detached_mount(relay_socket)
        except OSError:
            os.close(network)
            raise
        fds = [network, relay]
        return self.spawn(
            site,
            request,
            fds,
            cgroup=None,
            on_line=on_line,
            thread_name=f"site-{site}-agent",
            what="agent",
            go=token.encode(),
        )
