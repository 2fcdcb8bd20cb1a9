"""Installing a wheelhouse at an SSH site, once: the agent's environment and each app's.

At the site, under its workdir ``W``: ``W/wheels/KEY`` holds a wheelhouse as shipped and
``W/envs/KEY`` the virtual environment made from it; each is complete only with its marker,
so an interrupted upload or install is redone, and one that is there is never touched again
(a second ``fedsim provision`` changes nothing). Installs take a lock at the site, so two runs
provisioning one host take turns. Nothing is downloaded at the site (``pip --no-index``).
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncssh

from fedsim.appenv import COMPLETE_MARKER, ensure_app_env
from fedsim.errors import EnvironmentBuildError
from fedsim.logs import get_logger
from fedsim.pythons import find_python
from fedsim.sites.install import INSTALL_TIMEOUT, NO_PYTHON, install_script
from fedsim.sites.ssh_connect import SshSession, connect, workdir_shell
from fedsim.sites.wheelhouse import Wheelhouse, agent_wheelhouse, app_wheelhouse

if TYPE_CHECKING:
    from fedsim.config import RunConfig, SiteConfig

log = get_logger("provision")


@dataclass(frozen=True)
class Provisioned:
    """One environment at one site: where it is and whether this call installed it."""

    env: str
    installed: bool
    uploaded_bytes: int


async def remote_home_path(session: SshSession, workdir: str) -> str:
    """The site's workdir as an absolute path (``~`` is the login's home), made 0700."""
    shell = workdir_shell(workdir)
    result = await session.run(f"umask 077 && mkdir -p {shell} && cd {shell} && pwd -P")
    if result.exit_status != 0:
        raise EnvironmentBuildError(
            f"site {session.site}: cannot make the workdir {workdir}: {result.stderr}"
        )
    return str(result.stdout).strip()


async def _upload(session: SshSession, wheelhouse: Wheelhouse, workdir: str) -> int:
    """Ship the wheelhouse unless the site has it complete; returns the bytes sent."""
    target = f"{workdir}/wheels/{wheelhouse.key}"
    check = await session.run(f"test -f {shlex.quote(target)}/{COMPLETE_MARKER}")
    if check.exit_status == 0:
        return 0
    partial = f"{target}.partial-{secrets.token_hex(4)}"
    await session.run(f"mkdir -p {shlex.quote(workdir)}/wheels")
    try:
        async with session.connection.start_sftp_client() as sftp:
            await sftp.put(str(wheelhouse.path), partial, recurse=True)
    except (OSError, asyncssh.Error) as exc:
        raise EnvironmentBuildError(
            f"site {session.site}: uploading the wheels failed: {exc}"
        ) from exc
    # another run may have finished the same upload meanwhile: keep one, drop the other
    done = await session.run(
        f"if [ -f {shlex.quote(target)}/{COMPLETE_MARKER} ]; then rm -rf {shlex.quote(partial)}; "
        f"else rm -rf {shlex.quote(target)} && mv {shlex.quote(partial)} {shlex.quote(target)}; fi"
    )
    if done.exit_status != 0:
        raise EnvironmentBuildError(f"site {session.site}: storing the wheels: {done.stderr}")
    return wheelhouse.size()


async def provision(session: SshSession, wheelhouse: Wheelhouse, workdir: str) -> Provisioned:
    """The environment of ``wheelhouse`` at the site, installed if it is not there yet."""
    env = f"{workdir}/envs/{wheelhouse.key}"
    present = await session.run(f"test -f {shlex.quote(env)}/{COMPLETE_MARKER}")
    if present.exit_status == 0:
        return Provisioned(env, installed=False, uploaded_bytes=0)
    sent = await _upload(session, wheelhouse, workdir)
    script = install_script(workdir, wheelhouse.key, wheelhouse.python)
    log.info("site %s: installing %s", session.site, wheelhouse.key)
    result = await session.run(f"sh -c {shlex.quote(script)}", timeout=INSTALL_TIMEOUT)
    if result.exit_status == NO_PYTHON:
        raise EnvironmentBuildError(
            f"site {session.site} ({session.target.address}): no Python {wheelhouse.python} "
            f"there, which {wheelhouse.key} was built for; install python{wheelhouse.python}"
        )
    if result.exit_status != 0:
        tail = "\n".join(str(result.stderr).strip().splitlines()[-15:])
        raise EnvironmentBuildError(
            f"site {session.site}: installing {wheelhouse.key} failed:\n{tail}"
        )
    installed = str(result.stdout).strip().endswith("installed")
    return Provisioned(env, installed=installed, uploaded_bytes=sent)


@dataclass(frozen=True)
class SiteProvisioning:
    """What ``fedsim provision`` did at one site."""

    site: str
    location: str
    environments: dict[str, Provisioned]
    seconds: float
    docker: str | None = None
    """featurecloud.ai's sites only: Docker ``present``, ``installed`` or ``started``."""

    @property
    def changed(self) -> bool:
        installed = any(p.installed or p.uploaded_bytes for p in self.environments.values())
        return installed or self.docker not in (None, "present")


SiteWork = Callable[[SshSession, str], Awaitable[tuple[dict[str, Provisioned], str | None]]]
"""What provisioning does at one site, given its session and workdir: the environments it
made (by name) and what it did about Docker (None: nothing)."""


def app_wheelhouses(config: RunConfig) -> list[Wheelhouse]:
    """Every step's app environment (built here first, when needed) as a wheelhouse."""
    envs = []
    for step in config.workflow:
        python = None if step.python is None else str(find_python(step.python))
        envs.append(ensure_app_env(step.app, python=python, requirements=step.requirements))
    return list(dict.fromkeys(app_wheelhouse(e) for e in envs))


def on_ssh_sites(config: RunConfig, work: SiteWork) -> list[SiteProvisioning]:
    """``work`` at every SSH site of ``config``, all sites at once; raises the first site's
    error, naming the site."""
    sites = [s for s in config.sites if s.ssh is not None]

    async def one(site: SiteConfig) -> SiteProvisioning:
        assert site.ssh is not None
        start = time.monotonic()
        session = await connect(site.name, site.ssh)
        try:
            workdir = await remote_home_path(session, site.ssh.workdir)
            done, docker = await work(session, workdir)
        finally:
            await session.close()
        location = f"ssh://{site.ssh.address}"
        return SiteProvisioning(site.name, location, done, time.monotonic() - start, docker)

    async def every() -> list[SiteProvisioning]:
        return list(await asyncio.gather(*(one(s) for s in sites)))

    return asyncio.run(every()) if sites else []


def provision_sites(config: RunConfig) -> list[SiteProvisioning]:
    """Every SSH site of ``config`` made ready for the embedded platform: the agent and every
    step's app environment installed there (each built here first, when needed). Local sites
    need nothing. (featurecloud.ai's sites: ``fedsim.featurecloud.site_provision``.)"""
    if not any(s.ssh is not None for s in config.sites):
        return []
    wheelhouses = [agent_wheelhouse(), *app_wheelhouses(config)]

    async def work(session: SshSession, workdir: str) -> tuple[dict[str, Provisioned], None]:
        return {w.key: await provision(session, w, workdir) for w in wheelhouses}, None

    return on_ssh_sites(config, work)
