"""A local site whose apps a fork-server forks (``forkserver.py``) and whose agents the run's
agent fork-server forks (``agent_forkserver.py``): an agent has a network of its own and
reaches its app through connections the site's pid 1 makes (``agent/app_dialer.py``).

The site's app copies and inputs live under the run's fork folder, which the fork-server
sees with the run directory's site folders (the outputs); the agent's token and launch file
stay in the site's control folder outside both.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from fedsim.sites.agent_forkserver import AgentForkServer
from fedsim.sites.base import AgentLaunch, AppBundle, LineSink, SiteStep
from fedsim.sites.forkserver import ForkServer
from fedsim.sites.limits import Limits, rlimits
from fedsim.sites.local import LocalPlacement
from fedsim.sites.local_step import LocalRunningSite, SiteContext, launch_bytes
from fedsim.sites.sandbox import identity_files, sandbox_env
from fedsim.sites.sandboxes import SiteProcess
from fedsim.sites.uids import SiteUids

ServerOf = Callable[[AppBundle], ForkServer]
"""The run's fork-server for an app's environment (started on first use)."""
AgentsOf = Callable[[], AgentForkServer]
"""The run's agent fork-server (started with the run's local sites)."""


class ForkedRunningSite(LocalRunningSite):
    """A step whose app is forked; ``app_copy``'s folder is ``<site>/step-N`` of the fork
    folder, holding ``input`` and ``app``; the output folder is in the run directory."""

    def __init__(
        self,
        site: SiteContext,
        step: SiteStep,
        input_dir: Path,
        app_copy: Path,
        server: ServerOf,
        agents: AgentsOf,
    ) -> None:
        super().__init__(site, step, input_dir, app_copy)
        self._server = server
        self._agents = agents
        self._dialer: socket.socket | None = None
        """fedsim's end of the site's dialer, until the agent has it."""

    def _start_agent(self, launch: AgentLaunch, on_line: LineSink) -> SiteProcess:
        site = self._site
        assert self._dialer is not None
        dialer, self._dialer = self._dialer.detach(), None
        return self._agents().spawn_agent(
            site.name,
            uid=None if site.uids is None else site.uids.agent,
            launch=launch_bytes(launch).decode(),
            token=self._step.token,
            dialer=dialer,
            relay_socket=self._step.relay_socket,
            on_line=on_line,
        )

    def stop(self) -> None:
        super().stop()
        if self._dialer is not None:
            self._dialer.close()
            self._dialer = None

    def _start_app(self, launch: AgentLaunch, on_line: LineSink) -> SiteProcess:
        site, step = self._site, self._step
        uid = self._copy_app()
        server = self._server(step.app)
        identity = identity_files(site.name, uid if uid is not None else os.getuid())
        request = {
            "hostname": site.name,
            "dir": f"{self._app_copy.parent.parent.name}/{self._app_copy.parent.name}",
            "output": str(self.output_dir.resolve().relative_to(server.outputs_dir)),
            "uid": uid,
            "tmp_bytes": site.limits.tmp,
            "identity": {Path(dest).name: text for dest, text in identity.items()},
            "env": sandbox_env({"FEDSIM_SHORTEN_WAITS": "1" if launch.shorten_waits else "0"}),
            "rlimits": rlimits(site.limits, self._cgroup),
        }
        secrets = None if step.env_file is None else os.open(step.env_file, os.O_RDONLY)
        app, self._dialer = server.spawn_app(
            site.name,
            request,
            secrets,
            cgroup=self._cgroup,
            on_line=on_line,
            thread_name=f"site-{site.name}-app",
        )
        return app


class ForkedPlacement(LocalPlacement):
    """One local site started from fork-servers: no network holder (each forked app makes
    the site's network), its folders under the fork folder, its control folder apart."""

    def __init__(
        self,
        name: str,
        site_dir: Path,
        *,
        control_dir: Path,
        server: ServerOf,
        agents: AgentsOf,
        server_uid: int | None,
        limits: Limits,
        uids: SiteUids | None,
        seccomp_filter: Path,
        run_id: str,
    ) -> None:
        super().__init__(
            name, site_dir, limits=limits, uids=uids, seccomp_filter=seccomp_filter, run_id=run_id
        )
        self._control = control_dir
        self._server = server
        self._agents = agents
        self._server_uid = server_uid

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "start": "fork"}

    def prepare(self, app: AppBundle) -> None:
        """The environment's fork-server starts here, with the run, so that its imports are
        not a step's: a step's sites start as soon as the step does."""
        super().prepare(app)
        self._server(app)
        self._agents()

    def open(self) -> None:
        self._dir.mkdir(mode=0o700)
        if self._server_uid is not None:
            os.chown(self._dir, self._server_uid, self._server_uid)
        self._control.mkdir(parents=True, mode=0o700)
        self._context = SiteContext(
            name=self.name,
            control_dir=self._control,
            holder_pid=None,
            limits=self._limits,
            uids=self._uids,
            seccomp_filter=self._seccomp,
            run_id=self._run_id,
        )

    def _running_site(self, step: SiteStep) -> LocalRunningSite:
        assert self._context is not None
        step_dir = self._step_dir()
        return ForkedRunningSite(
            self._context, step, step_dir / "input", step_dir / "app", self._server, self._agents
        )
