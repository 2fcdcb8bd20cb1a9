"""The SSH placement: a site on another machine, reached over SSH, separated as a local one.

At the host the site is what a local site is here: ``remote_host.py`` runs there (in the agent
environment provisioned from fedsim's wheelhouse) and holds the site's network, sandboxes,
uids, seccomp filter and limits for the whole run, driven over the SSH channel. This side
uploads what the site needs (the app, each step's inputs, the site's env file, 0600), asks
for each step, and downloads the outputs; the site's lines come back stamped with the host's
clock, corrected by the offset measured when the site opened.

The relay: the host opens no port and the agent has loopback only. Each step gets an SSH
reverse forward from a Unix socket at the host (bound into the agent's sandbox) to the relay's
TLS listener on this machine's loopback; TLS runs from the agent, through the forward, to
the relay, pinned to the run's CA, so sshd and the host's other users see only ciphertext.

All connections of a run share one event loop (a thread of the family), so every site is
driven concurrently; placement methods are called from the site group's threads and wait
for their coroutine there. A host that stops answering keepalives is lost within seconds:
its running step fails, named, and the run goes on to collect everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import shlex
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from fedsim.config import SshTarget
from fedsim.errors import SiteFailed, SiteUnreachable
from fedsim.logs import FIELD_SEPARATOR, get_logger
from fedsim.safefiles import Skipped, copy_inputs, prune_tree
from fedsim.sites.bare import unsandboxed_warning
from fedsim.sites.base import AgentLaunch, AppBundle, LineSink, SiteStep
from fedsim.sites.limits import Limits
from fedsim.sites.provision import Provisioned, provision, remote_home_path
from fedsim.sites.remote_host import HEARTBEAT, HEARTBEAT_INTERVAL, LOST_AFTER
from fedsim.sites.remote_running import RemoteRunningSite, dispatch
from fedsim.sites.ssh_connect import EventLoopThread, SshSession, connect, upload_secret
from fedsim.sites.wheelhouse import Wheelhouse, agent_wheelhouse, app_wheelhouse

if TYPE_CHECKING:
    from fedsim.config import RunConfig, SiteConfig

log = get_logger("ssh")

REQUEST_TIMEOUT = 120.0
"""A request to the site host (open the network, copy the app for a step, prune outputs)."""
AGENT_SOCKET = "https+unix:///run/fedsim/relay.sock"
"""The relay as the agent sees it: TLS through the forward's socket (the path is rewritten to
where the sandbox binds it)."""


class SshFamily:
    """What a run's SSH sites share: the event loop and the wheelhouses (built once)."""

    def __init__(self, config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str):
        self._config = config
        self._workdir = workdir
        self._run_id = run_id
        self._loop = EventLoopThread()
        self._lock = threading.Lock()
        self._agent: Wheelhouse | None = None
        self._apps: dict[Path, Wheelhouse] = {}

    def placement(self, site: SiteConfig) -> SshPlacement:
        assert site.ssh is not None
        return SshPlacement(
            site.name,
            site.ssh,
            family=self,
            limits=self._config.limits_of(site),
            run_id=self._run_id,
            staging=self._workdir / "ssh-staging" / site.name,
        )

    def agent_wheels(self) -> Wheelhouse:
        with self._lock:
            if self._agent is None:
                self._agent = agent_wheelhouse()
            return self._agent

    def app_wheels(self, env: Path) -> Wheelhouse:
        with self._lock:
            if env not in self._apps:
                self._apps[env] = app_wheelhouse(env)
            return self._apps[env]

    @property
    def loop(self) -> EventLoopThread:
        return self._loop

    def close(self) -> None:
        self._loop.close()


def _run_folder(run_id: str, site: str) -> str:
    """Short (a Unix socket's path has room for 107 bytes) and one per run and site: two
    sites of a run may share a host and its login."""
    return hashlib.sha256(f"{run_id}/{site}".encode()).hexdigest()[:12]


class SshPlacement:
    """One site on an SSH host (see the module docstring)."""

    remote = True

    def __init__(
        self,
        name: str,
        target: SshTarget,
        *,
        family: SshFamily,
        limits: Limits,
        run_id: str,
        staging: Path,
    ) -> None:
        self.name = name
        self.target = target
        self._family = family
        self._limits = limits
        self._run_id = run_id
        self._staging = staging
        self._session: SshSession | None = None
        self._process: asyncssh.SSHClientProcess[str] | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._closing = False
        self._sink: LineSink | None = None
        self._running: RemoteRunningSite | None = None
        self._forward: asyncssh.SSHListener | None = None
        self._apps: dict[AppBundle, tuple[str, str]] = {}
        self._remote_env_file: str | None = None
        self._step = 0
        self.workdir = ""
        self.folder = ""
        self.clock_offset = 0.0
        self.sandboxed = True
        self.provisioned: dict[str, Provisioned] = {}
        self.provisioning_s = 0.0

    # --- Placement -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "ssh",
            "location": f"ssh://{self.target.address}",
            "sandboxed": self.sandboxed,
            "clock_offset_s": round(self.clock_offset, 4),
            # what this run installed at the site, and the time it took to find or install
            # its environments (a first run on a fresh host against the later ones)
            "installed": sorted(n for n, p in self.provisioned.items() if p.installed),
            "provisioning_s": round(self.provisioning_s, 2),
        }

    def _provision(self, name: str, wheelhouse: Wheelhouse) -> Provisioned:
        """The environment of ``wheelhouse`` at the site (installed if missing), timed."""
        start = time.monotonic()
        session = self._need_session()
        done = self._family.loop.call(provision(session, wheelhouse, self.workdir))
        self.provisioning_s += time.monotonic() - start
        self.provisioned[name] = done
        return done

    def open(self) -> None:
        loop = self._family.loop
        self._session = loop.call(connect(self.name, self.target))
        self.workdir = loop.call(remote_home_path(self._session, self.target.workdir))
        agent = self._provision("agent", self._family.agent_wheels())
        self.folder = f"{self.workdir}/runs/{_run_folder(self._run_id, self.name)}"
        loop.call(self._shell(f"umask 077 && mkdir -p {shlex.quote(self.folder)}"))
        loop.call(self._start_host(agent.env))
        before = time.time()
        answer = self._request(
            "open",
            site=self.name,
            run_id=self._run_id,
            dir=f"{self.folder}/site",
            run_folder=self.folder,
            lost_after=LOST_AFTER,
            limits=asdict(self._limits),
        )
        after = time.time()
        self.clock_offset = float(answer["time"]) - (before + after) / 2
        self.sandboxed = bool(answer.get("sandboxed", False))
        if not self.sandboxed:
            log.warning("%s (%s)", unsandboxed_warning(self.name), self.target.address)
        log.info(
            "site %s: on %s, clock offset %+.3f s",
            self.name,
            self.target.address,
            self.clock_offset,
        )

    def prepare(self, app: AppBundle) -> None:
        """The app's environment installed at the site from its wheelhouse (once per host),
        the app's folder uploaded for this run."""
        loop = self._family.loop
        provisioned = self._provision(app.env.name, self._family.app_wheels(app.env))
        remote_app = f"{self.folder}/apps/{len(self._apps) + 1}"
        loop.call(self._upload(app.app_dir, remote_app))
        self._request("prepare", app_dir=remote_app, env=provisioned.env)
        self._apps[app] = (remote_app, provisioned.env)

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        """Merged here exactly as for a local site, then uploaded as one folder."""
        self._step += 1
        local = self._staging / f"step-{self._step}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            copy_inputs(inputs, local, overrides)
            remote = f"{self.folder}/inputs/step-{self._step}"
            self._family.loop.call(self._upload(local, remote))
        finally:
            shutil.rmtree(local, ignore_errors=True)
        self._request("inputs", inputs=[remote])

    def spawn(self, launch: AgentLaunch, step: SiteStep, on_line: LineSink) -> RemoteRunningSite:
        if step.relay_tls is None:
            raise SiteFailed(f"site {self.name}: an SSH site needs the relay's TLS listener")
        loop = self._family.loop
        remote_app, remote_env = self._apps[step.app]
        if self._running is not None:
            self._running.stop()
        self._sink = on_line
        socket = f"{self.folder}/relay-{self._step}.sock"
        loop.call(self._forward_relay(socket, step.relay_tls.port))
        if step.env_file is not None and self._remote_env_file is None:
            self._remote_env_file = f"{self.folder}/site.env"
            loop.call(upload_secret(self._need_session(), step.env_file, self._remote_env_file))
        running = RemoteRunningSite(self)
        self._running = running
        self._request(
            "spawn",
            launch=replace(
                launch, relay_url=AGENT_SOCKET, relay_ca=step.relay_tls.ca_pem
            ).to_json(),
            token=step.token,
            relay_socket=socket,
            output_dir=self._remote_output(),
            env_file=self._remote_env_file if step.env_file is not None else None,
            app_dir=remote_app,
            env=remote_env,
        )
        return running

    def fetch_outputs(self, dest: Path) -> list[Skipped]:
        """Pruned at the host (links, FIFOs: what the app left that leads elsewhere), then
        downloaded; pruned here again, as the download is what this machine trusts."""
        if self._running is None:
            return []
        answer = self._request("collect", output_dir=self._remote_output())
        skipped = [Skipped(path, reason) for path, reason in answer.get("skipped", [])]
        self._family.loop.call(self._close_forward())
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        self._family.loop.call(self._download(self._remote_output(), dest))
        return skipped + prune_tree(dest)

    def close(self) -> None:
        """Stop the site host (it stops the site), remove the run's folder at the host (the
        environments stay, for the next run) and close the connection."""
        if self._session is None:
            return
        loop = self._family.loop
        self._closing = True
        # the host ends once it has answered "close", and its end marks the site closed
        # (``_read_answers``): whether the folder is removed is decided before, or a loaded
        # machine that saw the end first kept the folder
        reachable = self._lost is None
        try:
            if self._process is not None and reachable:
                with contextlib.suppress(SiteUnreachable):
                    self._request("close", timeout=30)
            loop.call(self._close_forward())
            if reachable and self.folder and not self._session.connection.is_closed():
                loop.call(self._shell(f"rm -rf {shlex.quote(self.folder)}"), timeout=60)
        finally:
            loop.call(self._disconnect(), timeout=30)

    # --- the site host ---------------------------------------------------------------------

    def _need_session(self) -> SshSession:
        if self._session is None:
            raise SiteUnreachable(self.name, self.target.address, "not connected")
        return self._session

    def _request(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields: Any) -> dict[str, Any]:
        answer = self._family.loop.call(self._ask(op, fields, timeout), timeout + 5)
        if "error" in answer:
            raise SiteFailed(f"site {self.name} ({self.target.address}): {op}: {answer['error']}")
        return answer

    async def _ask(self, op: str, fields: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self._lost is not None or self._process is None:
            raise SiteUnreachable(self.name, self.target.address, self._lost or "not started")
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self._process.stdin.write(json.dumps({"id": ident, "op": op, **fields}) + "\n")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise SiteUnreachable(
                self.name, self.target.address, f"no answer to {op} in {timeout:g} s"
            ) from exc
        finally:
            self._pending.pop(ident, None)

    async def _start_host(self, env: str) -> None:
        command = f"{shlex.quote(env)}/bin/python -m fedsim.sites.remote_host"
        session = self._need_session()
        self._process = await session.connection.create_process(command, encoding="utf-8")
        self._readers = [
            asyncio.create_task(self._read_answers()),
            asyncio.create_task(self._read_errors()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def _heartbeat(self) -> None:
        """A line now and then, so that a host whose link was cut ends its site by itself
        (``remote_host.Silence``): the host's sshd may never see the connection go."""
        assert self._process is not None
        line = json.dumps({"op": HEARTBEAT}) + "\n"
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                self._process.stdin.write(line)
            except (OSError, asyncssh.Error):
                return

    async def _read_answers(self) -> None:
        assert self._process is not None
        reason = "the site host exited"
        try:
            async for text in self._process.stdout:
                self._dispatch(json.loads(text))
        except (OSError, asyncssh.Error, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if not self._closing:
            connection = self._session.connection if self._session else None
            if connection is not None and connection.is_closed():
                reason = "lost the connection (no answer to keepalives)"
            self._lost = reason
            log.error("site %s: %s at %s", self.name, reason, self.target.address)
        else:
            self._lost = self._lost or "closed"
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SiteUnreachable(self.name, self.target.address, reason))

    async def _read_errors(self) -> None:
        """What the site host prints outside the protocol (a crash's traceback)."""
        assert self._process is not None
        try:
            async for text in self._process.stderr:
                self._line(FIELD_SEPARATOR.join(("site", "WARNING", text.rstrip())), None)
        except (OSError, asyncssh.Error):
            return

    def _dispatch(self, message: dict[str, Any]) -> None:
        dispatch(message, self._pending.get, self._line, self._running)

    def _line(self, line: str, stamp: float | None) -> None:
        at = None if stamp is None else stamp - self.clock_offset
        if self._sink is not None:
            self._sink(line, at)
        else:
            log.info("site %s: %s", self.name, line.split(FIELD_SEPARATOR)[-1])

    async def _shell(self, command: str) -> None:
        result = await self._need_session().run(command)
        if result.exit_status != 0:
            raise SiteFailed(f"site {self.name}: {command!r} failed: {result.stderr}")

    async def _upload(self, local: Path, remote: str) -> None:
        session = self._need_session()
        try:
            await self._shell(f"mkdir -p {shlex.quote(str(Path(remote).parent))}")
            async with session.connection.start_sftp_client() as sftp:
                await sftp.put(str(local), remote, recurse=True)
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(self.name, self.target.address, f"upload failed: {exc}") from exc

    async def _download(self, remote: str, local: Path) -> None:
        session = self._need_session()
        try:
            async with session.connection.start_sftp_client() as sftp:
                if await sftp.isdir(remote):
                    await sftp.get(remote, str(local), recurse=True)
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(
                self.name, self.target.address, f"downloading the outputs failed: {exc}"
            ) from exc

    async def _forward_relay(self, socket: str, port: int) -> None:
        await self._close_forward()
        try:
            self._forward = await self._need_session().connection.forward_remote_path_to_port(
                socket, "127.0.0.1", port
            )
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(
                self.name, self.target.address, f"the relay's forward was refused: {exc}"
            ) from exc

    async def _close_forward(self) -> None:
        forward, self._forward = self._forward, None
        if forward is not None:
            forward.close()
            await forward.wait_closed()

    async def _disconnect(self) -> None:
        if self._process is not None:
            self._process.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _remote_output(self) -> str:
        return f"{self.folder}/outputs/step-{self._step}"

    def stop_running(self) -> None:
        if self._lost is None and self._process is not None:
            with contextlib.suppress(SiteUnreachable):
                self._request("stop", timeout=60)

    def lost_failure(self) -> str | None:
        """The loss with the host it was lost from, for the running step's failure."""
        return None if self._lost is None else f"{self._lost} to {self.target.address}"
