"""The local placement: a site on this machine, in a network of its own with loopback only.

The family (one per run) holds what the run's local sites share and what must exist once:
the check that bubblewrap is here, the compiled seccomp filter, and (as root) the block of
uids. Each placement holds one site for the whole run: its folders under the run's private
work folder and a small process that holds its network namespace; every workflow step
spawns a fresh app and agent there (``local_step.py``).

The network holder and the sandboxes die with the *thread* that started them (``setpriv
--pdeathsig`` and ``bwrap --die-with-parent`` watch the parent thread, not the process), so
whoever opens and spawns sites from worker threads keeps those threads alive until the sites
are closed (``group.py`` does).
"""

from __future__ import annotations

import copy
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedsim.errors import ConfigError, SandboxError
from fedsim.logs import get_logger
from fedsim.safefiles import Skipped, copy_inputs, copy_tree, prune_tree
from fedsim.sites.base import AgentLaunch, AppBundle, LineSink, SiteStep, relay_folder
from fedsim.sites.limits import Limits
from fedsim.sites.local_step import (
    LAUNCHER,
    RELAY_SOCKET,
    LocalRunningSite,
    SiteContext,
    fedsim_runtime_dirs,
    venv_base_dirs,
)
from fedsim.sites.sandbox import bwrap_path, running_as_root
from fedsim.sites.sandboxes import chown_tree
from fedsim.sites.seccomp import write_filter
from fedsim.sites.uids import BLOCK_SIZE, SiteUids, UidBlock

if TYPE_CHECKING:
    from fedsim.config import RunConfig, SiteConfig
    from fedsim.sites.agent_forkserver import AgentForkServer
    from fedsim.sites.forkserver import ForkServer

START_ENV = "FEDSIM_SITE_START"
"""Overrides the config's ``site_start`` (``fork``, ``exec`` or ``auto``): for tests and
benchmarks that compare the two start-ups."""

__all__ = [
    "LocalFamily",
    "LocalPlacement",
    "copy_inputs",
    "fedsim_runtime_dirs",
    "venv_base_dirs",
]

log = get_logger("site")
T = TypeVar("T")


class LocalFamily:
    """What a run's local sites share; made once per run by the factory, closed at its end."""

    def __init__(self, config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str):
        bwrap_path()  # no bubblewrap: fail before anything is built
        self._config = config
        self._workdir = workdir
        self._run_id = run_id
        self._seccomp = write_filter(workdir / "seccomp.bpf")
        self._uids = UidBlock(len(sites)) if running_as_root() else None
        self._index = 0
        self._fork = site_start(config.site_start) == "fork"
        self._fork_dir = workdir / "fork"
        self._outputs_dir = config.output_dir / run_id / "sites"  # the run directory's (rundir.py)
        self._servers: dict[Path, ForkServer] = {}
        self._servers_lock = threading.Lock()
        self._agents: Future[AgentForkServer] | None = None
        if self._fork:
            self._fork_dir.mkdir(mode=0o700)
            if self._uids is not None:
                os.chown(self._fork_dir, self._uids.server, self._uids.server)
            relay_folder(workdir).mkdir(mode=0o700, exist_ok=True)
            self._agents = _started_aside(self._start_agent_server)

    def placement(self, site: SiteConfig) -> LocalPlacement:
        uids = None if self._uids is None else self._uids.site(self._index)
        self._index += 1
        if self._fork:
            from fedsim.sites.forked import ForkedPlacement

            return ForkedPlacement(
                site.name,
                self._fork_dir / site.name,
                control_dir=self._workdir / "sites" / site.name / "control",
                server=self._server,
                agents=self._agent_server,
                server_uid=None if self._uids is None else self._uids.server,
                limits=self._config.limits_of(site),
                uids=uids,
                seccomp_filter=self._seccomp,
                run_id=self._run_id,
            )
        return LocalPlacement(
            site.name,
            self._workdir / "sites" / site.name,
            limits=self._config.limits_of(site),
            uids=uids,
            seccomp_filter=self._seccomp,
            run_id=self._run_id,
        )

    def _server(self, app: AppBundle) -> ForkServer:
        """The fork-server of the app's environment, started by the first site that needs it."""
        from fedsim.sites.forkserver import ForkServer

        with self._servers_lock:
            server = self._servers.get(app.env)
            if server is None:
                block = self._uids
                server = ForkServer(
                    app.env,
                    [app.env, *venv_base_dirs(app.env)],
                    self._fork_dir,
                    self._outputs_dir,
                    self._seccomp,
                    LAUNCHER,
                    None if block is None else (block.start, BLOCK_SIZE, block.server),
                )
                self._servers[app.env] = server
            return server

    def _start_agent_server(self) -> AgentForkServer:
        from fedsim.sites.agent_forkserver import AgentForkServer

        return AgentForkServer(
            fedsim_runtime_dirs(), self._seccomp, relay_folder(self._workdir), RELAY_SOCKET
        )

    def _agent_server(self) -> AgentForkServer:
        """The run's agent fork-server; it started with the family, beside the app
        environments and their fork-server; one that failed to start fails each site here."""
        assert self._agents is not None
        failed = self._agents.exception()
        if failed is not None:  # a copy each: the run names its site in the error's message
            raise copy.copy(failed) from failed
        return self._agents.result()

    def close(self) -> None:
        servers: list[ForkServer | AgentForkServer] = list(self._servers.values())
        if self._agents is not None and self._agents.exception() is None:
            servers.append(self._agents.result())  # (waits for one still starting)
        for server in servers:
            server.close()
        if self._uids is not None:
            self._uids.close()


def _started_aside(start: Callable[[], T]) -> Future[T]:
    """``start()`` in a thread of its own, its result (or error) for whoever needs it: a
    fork-server's imports take a few tenths of a second that need not wait for anything."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(start())
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="fork-server-start", daemon=True).start()
    return future


def site_start(configured: str) -> str:
    """``fork`` or ``exec``: ``FEDSIM_SITE_START`` or the config; ``auto`` is fork where
    this machine lets an unprivileged process make a user namespace (which the fork-server
    needs), else exec."""
    chosen = os.environ.get(START_ENV) or configured
    if chosen not in ("auto", "fork", "exec"):
        raise ConfigError(f"{START_ENV}={chosen!r}: expected fork, exec or auto")
    if chosen != "auto":
        return chosen
    if _user_namespaces_allowed():
        return "fork"
    log.info("sites start the old way (a fresh interpreter each): no user namespaces here")
    return "exec"


def _user_namespaces_allowed() -> bool:
    nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = [*(nobody if running_as_root() else []), "/usr/bin/unshare", "--user", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalPlacement:
    """One site on this machine (see the module docstring)."""

    remote = False

    def __init__(
        self,
        name: str,
        site_dir: Path,
        *,
        limits: Limits,
        uids: SiteUids | None,
        seccomp_filter: Path,
        run_id: str,
    ) -> None:
        self.name = name
        self._dir = site_dir
        self._limits = limits
        self._uids = uids
        self._seccomp = seccomp_filter
        self._run_id = run_id
        self._holder: subprocess.Popen[str] | None = None
        self._context: SiteContext | None = None
        self._prepared: set[AppBundle] = set()
        self._step = 0
        self._running: LocalRunningSite | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "sandboxed": True}

    def open(self) -> None:
        self._dir.mkdir(parents=True, mode=0o700)
        control = self._dir / "control"
        control.mkdir(mode=0o700)
        self._holder = self._start_network()
        self._context = SiteContext(
            name=self.name,
            control_dir=control,
            holder_pid=self._holder.pid,
            limits=self._limits,
            uids=self._uids,
            seccomp_filter=self._seccomp,
            run_id=self._run_id,
        )

    def prepare(self, app: AppBundle) -> None:
        """The environment was built on this machine: the site runs it where it is (bound
        read-only); the app itself is copied afresh for every step."""
        python = app.env / "bin" / "python"
        if not python.exists():
            raise SandboxError(f"site {self.name}: no app environment at {app.env}")
        self._prepared.add(app)

    def _step_dir(self) -> Path:
        return self._dir / f"step-{self._step}"

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        self._step += 1  # each step's input (and app copy) is a folder of its own
        input_dir = self._step_dir() / "input"
        copy_inputs(inputs, input_dir, overrides)
        if self._uids is not None:
            chown_tree(input_dir, self._uids.app)

    def spawn(self, launch: AgentLaunch, step: SiteStep, on_line: LineSink) -> LocalRunningSite:
        assert self._context is not None, "spawn before open"
        assert step.app in self._prepared, "spawn of an app that was not prepared"
        assert launch.site == self.name
        if self._running is not None:
            self._running.stop()  # the previous step's, should it still run
        running = self._running_site(step)
        self._running = running
        running.start(launch, on_line)
        return running

    def _running_site(self, step: SiteStep) -> LocalRunningSite:
        assert self._context is not None
        return LocalRunningSite(
            self._context, step, self._step_dir() / "input", self._step_dir() / "app"
        )

    def fetch_outputs(self, dest: Path) -> list[Skipped]:
        """The app wrote its output on this machine, into the step's ``output_dir``: give it
        back to the user that runs fedsim and drop what leads elsewhere; copy only when asked
        for another folder."""
        if self._running is None:
            return []
        written = self._running.output_dir
        if not written.is_dir():
            return []
        if self._uids is not None:
            chown_tree(written, os.getuid())
        skipped = prune_tree(written)
        if dest.resolve() != written.resolve():
            skipped += copy_tree(written, dest)
        return skipped

    def close(self) -> None:
        if self._running is not None:
            self._running.stop()
        holder, self._holder = self._holder, None
        if holder is None:
            return
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    def _start_network(self) -> subprocess.Popen[str]:
        """A process that holds the site's network namespace: loopback only, brought up."""
        unshare = ["/usr/bin/unshare", "--net"]
        if not running_as_root():
            unshare += ["--user", "--map-current-user", "--keep-caps"]
        script = "/usr/sbin/ip link set lo up && echo ready && exec sleep infinity"
        return self._hold([*unshare, "--", "/bin/sh", "-c", script])

    def _hold(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start ``argv``, which makes the site's namespaces, prints ``ready`` and then only
        holds them; it dies with the thread that started it."""
        holder = subprocess.Popen(
            ["/usr/bin/setpriv", "--pdeathsig=KILL", *argv],
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
            holder.stdout.close()
            raise OSError(f"could not make the network of site {self.name}: {first}")
        return holder
