"""Connections to SSH sites, on asyncssh: the one place that knows how fedsim logs in.

Why asyncssh: it forwards Unix sockets (the relay will reach an SSH site that way), it is
asyncio (one event loop connects to every site at once), and it reads ``~/.ssh/config`` as
OpenSSH does, so a site's ``HOST`` may be an alias the user already has.

Host keys are always checked against known_hosts (the files ``~/.ssh/config`` names for the
host with ``UserKnownHostsFile``, else ``~/.ssh/known_hosts``). An unknown key is accepted
only for a site with ``ssh_accept_new = true``, and then written to known_hosts, as OpenSSH's
``StrictHostKeyChecking=accept-new`` does; a known host whose key changed is always refused.
Every failure becomes a :class:`~fedsim.errors.SiteUnreachable` naming the site and host.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from fedsim.config import SshTarget
from fedsim.errors import HostKeyError, SiteUnreachable
from fedsim.logs import get_logger

log = get_logger("ssh")
T = TypeVar("T")

CONNECT_TIMEOUT = 15.0
"""Seconds for the TCP connection and the SSH handshake: a host whose link is cut answers
nothing at all, and must not hold up the other sites for the kernel's minutes of retries."""
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
KEEPALIVE_INTERVAL = 1.0
KEEPALIVE_COUNT_MAX = 3
"""A host that answers no keepalive for about this many intervals is gone: a cut link sends
nothing at all (no reset, no FIN), and a run must fail within seconds, not TCP's minutes."""


@dataclass
class _HostKeyVerdict:
    """What the host-key callback decided, so the error can say why (asyncssh only says
    "Host key is not trusted") and the accepted key can be recorded after login."""

    known_hosts: asyncssh.SSHKnownHosts
    accept_new: bool
    unknown: bool = False
    changed: bool = False
    accepted: asyncssh.SSHKey | None = None
    host: str = ""
    port: int | None = None


class _Client(asyncssh.SSHClient):
    """Called by asyncssh only for a key known_hosts does not trust."""

    def __init__(self, verdict: _HostKeyVerdict) -> None:
        self._verdict = verdict

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        verdict = self._verdict
        verdict.host, verdict.port = host, port
        trusted, ca_keys, revoked, *_ = asyncssh.match_known_hosts(
            verdict.known_hosts, host, addr, port
        )
        if trusted or ca_keys or revoked:
            verdict.changed = True  # the host is known, with another key
            return False
        verdict.unknown = True
        if verdict.accept_new:
            verdict.accepted = key
            return True
        return False


@dataclass
class SshSession:
    """An open connection to one site's host; close it with :meth:`close`."""

    site: str
    target: SshTarget
    connection: asyncssh.SSHClientConnection
    accepted_new_key: bool = False
    known_hosts_file: Path | None = field(default=None)

    async def run(self, command: str, timeout: float = 30.0) -> asyncssh.SSHCompletedProcess:
        """A remote shell line; a dead connection or a hung command is the site's failure."""
        try:
            return await self.connection.run(command, check=False, timeout=timeout)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(self.site, self.target.address, _describe(exc)) from exc

    async def close(self) -> None:
        """Closed and waited for, so no transport outlives the event loop that made it."""
        self.connection.close()
        await self.connection.wait_closed()


def _known_hosts_files(target: SshTarget, ssh_config: Sequence[Path] | None) -> list[Path]:
    """The known_hosts files OpenSSH would use for this host: ``UserKnownHostsFile`` from
    the ssh config if it sets one (``none`` counts as unset: known_hosts is always checked),
    else ``~/.ssh/known_hosts``."""
    options = asyncssh.SSHClientConnectionOptions(
        host=target.host,
        port=target.port if target.port is not None else (),
        username=target.user if target.user is not None else (),
        config=[str(p) for p in ssh_config] if ssh_config is not None else (),
    )
    files = options.known_hosts
    if isinstance(files, str | os.PathLike):
        files = [files]
    paths = [Path(f).expanduser() for f in files or [] if isinstance(f, str | os.PathLike)]
    return paths or [DEFAULT_KNOWN_HOSTS.expanduser()]


def _read_known_hosts(files: Sequence[Path]) -> asyncssh.SSHKnownHosts:
    """All files as one set of entries; a file that does not exist yet holds none."""
    text = ""
    for path in files:
        try:
            text += path.read_text() + "\n"
        except FileNotFoundError:
            continue
    return asyncssh.import_known_hosts(text)


def _record_key(path: Path, host: str, port: int | None, key: asyncssh.SSHKey) -> None:
    """Append ``key`` in OpenSSH's format (``[host]:port`` for a port other than 22), making
    ``~/.ssh`` (0700) and the file (0600) if needed, as ssh does."""
    name = host if port in (None, 22) else f"[{host}]:{port}"
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"{name} {algorithm} {blob}\n")


def _describe(exc: BaseException) -> str:
    """asyncssh's and the socket layer's errors in a user's words."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"login refused ({exc.reason}); check the user and ssh_key"
    if isinstance(exc, asyncssh.KeyImportError):
        return f"cannot use the key: {exc}"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


async def connect(
    site: str,
    target: SshTarget,
    *,
    timeout: float = CONNECT_TIMEOUT,
    ssh_config: Sequence[Path] | None = None,
) -> SshSession:
    """Log into ``target`` as site ``site``.

    ``ssh_config``: the OpenSSH client config files to read (default ``~/.ssh/config`` if
    it exists), for aliases, users, ports and keys, as ``ssh`` would."""
    files = (
        [target.known_hosts]
        if target.known_hosts is not None
        else _known_hosts_files(target, ssh_config)
    )
    verdict = _HostKeyVerdict(known_hosts=_read_known_hosts(files), accept_new=target.accept_new)
    kwargs: dict[str, Any] = {
        "port": target.port if target.port is not None else (),
        "username": target.user if target.user is not None else (),
        "known_hosts": verdict.known_hosts,
        "config": [str(p) for p in ssh_config] if ssh_config is not None else (),
        "connect_timeout": timeout,
        "client_factory": lambda: _Client(verdict),
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
    }
    if target.key is not None:
        # the config's key only, as ssh -i with IdentitiesOnly: an agent's keys are not
        # tried first (a server counts every refused key against MaxAuthTries)
        kwargs.update(client_keys=[str(target.key)], agent_path=None)
    try:
        # asyncssh's own timeout covers connect and handshake; this one is a backstop
        connection = await asyncio.wait_for(
            asyncssh.connect(target.host, **kwargs), timeout=timeout + 5
        )
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        if verdict.changed:
            raise HostKeyError(
                site,
                target.address,
                f"the host key differs from the one in {_names(files)}: refusing to connect "
                "(if the host was really reinstalled, remove its old line there)",
            ) from exc
        if verdict.unknown:
            raise HostKeyError(
                site,
                target.address,
                f"unknown host key (not in {_names(files)}); add it there, or set "
                "ssh_accept_new = true for this site to trust it on first use",
            ) from exc
        raise SiteUnreachable(site, target.address, _describe(exc)) from exc
    session = SshSession(site, target, connection)
    if verdict.accepted is not None:
        _record_key(files[0], verdict.host or target.host, verdict.port, verdict.accepted)
        session.accepted_new_key, session.known_hosts_file = True, files[0]
        log.info(
            "site %s: trusted the new host key of %s, added to %s",
            site,
            target.address,
            files[0],
        )
    return session


def _names(files: Sequence[Path]) -> str:
    return ", ".join(str(f) for f in files)


async def connect_all(
    targets: dict[str, SshTarget],
    *,
    timeout: float = CONNECT_TIMEOUT,
    ssh_config: Sequence[Path] | None = None,
) -> dict[str, SshSession | SiteUnreachable]:
    """Every site at once: the slowest host, not the sum of them, sets the wait. A site
    that fails gives its error in place of a session, so the others are still usable."""

    async def one(name: str, target: SshTarget) -> SshSession | SiteUnreachable:
        try:
            return await connect(name, target, timeout=timeout, ssh_config=ssh_config)
        except SiteUnreachable as exc:
            return exc

    results = await asyncio.gather(*(one(n, t) for n, t in targets.items()))
    return dict(zip(targets, results, strict=True))


def workdir_shell(workdir: str) -> str:
    """The workdir as a remote shell word: ``~`` becomes ``$HOME``, the rest is quoted."""
    if workdir == "~":
        return '"$HOME"'
    if workdir.startswith("~/"):
        return '"$HOME"/' + shlex.quote(workdir[2:])
    return shlex.quote(workdir)


class EventLoopThread:
    """An asyncio loop in a thread of its own, for every connection of a run's SSH sites:
    callers in other threads wait for their coroutine with ``call``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ssh", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


async def upload_secret(session: SshSession, local: Path, remote: str) -> None:
    """A file of secrets (a site's env file), created 0600 at the host; never read here
    but to copy it, and only ever to the site it belongs to."""
    attrs = asyncssh.SFTPAttrs(permissions=0o600)
    async with session.connection.start_sftp_client() as sftp:
        async with sftp.open(remote, "wb", attrs) as handle:
            await handle.write(local.read_bytes())
        await sftp.chmod(remote, 0o600)
