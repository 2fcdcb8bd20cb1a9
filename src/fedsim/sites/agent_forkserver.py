"""The run's agent fork-server, and the agents it forks into forked sites
(``agent_forkserver_main.py`` is what runs inside; ``docs/forked-agents.md`` the design).

The server's sandbox holds the system and fedsim's runtime read-only, the seccomp filter,
the folder of the relays' sockets, and placeholders its children mount over (``/etc``'s
identity files, the relay's socket where the launch description names it); no network, no
site's folder, no token. Each agent gets, on the request fedsim sends, its site's dialer
(``agent/app_dialer.py``), its only way to its app; its token only after it has become the
site's agent (its uid as root) and loaded the filter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedsim.sites.base import LineSink
from fedsim.sites.forkserver import ForkedApp, ForkingServer
from fedsim.sites.sandbox import Bind, SandboxSpec, identity_files, sandbox_env
from fedsim.sites.sandboxes import data_fd

SERVER_DIR = "/run/fedsim-agents"
AGENT_RUN_DIR = "/run/fedsim-agent"
RELAY_DIR = "/run/fedsim-relay"


class AgentForkServer(ForkingServer):
    """One per run; ``spawn_agent`` forks a site's agent, ``close`` ends them all."""

    def __init__(
        self, runtime_dirs: list[Path], seccomp_filter: Path, relay_dir: Path, relay_socket: str
    ) -> None:
        """``relay_dir``: the folder the relays' sockets will be in (``relay_folder``);
        ``relay_socket``: where in an agent's sandbox its launch description puts the relay
        (each agent's own bind of the socket)."""
        super().__init__("agents")
        self._relay_dir = relay_dir
        self._relay_socket = relay_socket
        placeholders = {**identity_files("fedsim-agents", 0), relay_socket: ""}
        data = {dest: data_fd(text.encode()) for dest, text in placeholders.items()}
        spec = SandboxSpec(
            hostname="fedsim-agents",
            binds=[
                Bind(seccomp_filter, f"{SERVER_DIR}/seccomp.bpf"),
                Bind(relay_dir, RELAY_DIR),
            ],
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
        uid: int | None,
        launch: str,
        token: str,
        dialer: int,
        relay_socket: Path,
        on_line: LineSink,
    ) -> ForkedApp:
        """Fork ``site``'s agent (as ``uid``, root only) with ``dialer``, its end of the site's
        dialer (handed over and closed here); ``launch`` is its description as the agent
        reads it, ``relay_socket`` the relay's socket of its step."""
        if relay_socket.parent != self._relay_dir:
            os.close(dialer)
            raise ValueError(f"the relay's socket {relay_socket} is not in {self._relay_dir}")
        request = {
            "hostname": site,
            "uid": uid,
            "identity": {
                Path(d).name: text
                for d, text in identity_files(site, os.getuid() if uid is None else uid).items()
            },
            "env": sandbox_env({}),
            "launch": launch,
            "relay": f"{RELAY_DIR}/{relay_socket.name}",
            "relay_socket": self._relay_socket,
        }
        return self.spawn(
            site,
            request,
            [dialer],
            cgroup=None,
            on_line=on_line,
            thread_name=f"site-{site}-agent",
            what="agent",
            go=token.encode(),
        )
