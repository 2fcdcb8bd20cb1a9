"""Where a participant's featurecloud.ai client runs: at its own site, as its own user.

``platform = "featurecloud"`` never acts for a participant from the orchestrator: each
site's steps are ``fedsim fc`` commands run AT that site with fedsim's own code (for an SSH
site, the agent environment provisioned there, as the embedded platform's agent), given that
site's own env file, and never inside an app's sandbox (FeatureCloud's controller runs the
apps, in Docker). A ``ClientSite`` is that place, behind one small interface the platform
cannot tell apart:

    open -> [put_files -> fc ... -> fetch] -> close

``LocalClientSite``: a process on this machine, with the site's env file where the config
names it. ``SshClientSite``: any site reached over SSH (an ``ssh://`` location; a VM placement
that is reached over SSH is one too). Its env file is either the config's, uploaded to that
site only (mode 0600, in the run's folder there, removed at the end), or, when the config
names none, the site's own ``WORKDIR/featurecloud.env``, which never leaves it: then no
machine but the participant's holds its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from fedsim.errors import SiteUnreachable
from fedsim.featurecloud.site_provision import cli_env, cli_wheelhouse, provision_featurecloud
from fedsim.safefiles import copy_tree
from fedsim.sites.provision import remote_home_path
from fedsim.sites.ssh_connect import EventLoopThread, SshSession, connect, upload_secret
from fedsim.sites.wheelhouse import agent_wheelhouse

if TYPE_CHECKING:
    from fedsim.config import FeatureCloudConfig, RunConfig, SiteConfig

SITE_ENV = "featurecloud.env"
"""The site's own login at an SSH site (in its workdir) when the config names no env file."""
DATA_DIR = "featurecloud-data"
"""The controller's data folder at the site (its ``site_info.json``), kept between runs."""


@dataclass(frozen=True)
class Answer:
    """What a ``fedsim fc`` command at a site ended with."""

    code: int
    stdout: str
    stderr: str


class ClientSite(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """Where the site's client ran, for ``summary.json``."""

    def open(self) -> None:
        """Reach the site and make fedsim's client available there."""

    def data_dir(self) -> str:
        """The FeatureCloud controller's data folder at the site."""

    def featurecloud_cli(self) -> str:
        """The ``featurecloud`` CLI of its own environment at the site (known once open)."""

    def fc(self, args: Sequence[str], stdin: str = "") -> Answer:
        """``fedsim fc ARGS --env-file <the site's own>`` at the site; secrets only on stdin."""

    def put_files(self, files: Sequence[Path], label: str) -> list[str]:
        """``files`` (on this machine) made available at the site; their paths there."""

    def scratch(self, label: str) -> str:
        """A fresh private folder at the site, for a download."""

    def fetch(self, remote: str, local: Path) -> None:
        """A folder at the site copied into ``local`` on this machine."""

    def close(self) -> None:
        """Remove what this run left at the site (never the environment or the data dir)."""


def _clean_env() -> dict[str, str]:
    """This process's environment without any featurecloud.ai login: a site's command gets
    only its own, from its own env file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FEATURECLOUD_")}


class LocalClientSite:
    """A site on this machine: its commands are processes here. The ``featurecloud`` CLI is
    the one of its own environment in fedsim's cache (built like an app's, on first use);
    Docker is the user's own, only checked (``site_setup.py``)."""

    def __init__(self, site: SiteConfig, workdir: Path, settings: FeatureCloudConfig) -> None:
        assert site.env_file is not None  # the config requires one for a local site
        self.name = site.name
        self._env_file = site.env_file
        self._folder = workdir / "fc-sites" / site.name
        self._settings = settings
        self._cli = ""

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "location": "local"}

    def open(self) -> None:
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cli = str(cli_env(self._settings) / "bin" / "featurecloud")

    def data_dir(self) -> str:
        return str(self._folder / DATA_DIR)

    def featurecloud_cli(self) -> str:
        return self._cli

    def fc(self, args: Sequence[str], stdin: str = "") -> Answer:
        command = [sys.executable, "-m", "fedsim", "fc", *args, "--env-file", str(self._env_file)]
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=_clean_env(), check=False
        )
        return Answer(done.returncode, done.stdout, done.stderr)

    def put_files(self, files: Sequence[Path], label: str) -> list[str]:
        return [str(f) for f in files]

    def scratch(self, label: str) -> str:
        return tempfile.mkdtemp(prefix=f"{label}-", dir=self._folder)

    def fetch(self, remote: str, local: Path) -> None:
        copy_tree(Path(remote), local)

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


class SshClientSite:
    """A site reached over SSH: provisioned for featurecloud.ai (fedsim's agent environment,
    which holds the ``fedsim fc`` client, then the website and registry reached, Docker and
    the ``featurecloud`` CLI: ``site_provision.py``), then each command run over the
    connection."""

    def __init__(
        self, site: SiteConfig, loop: EventLoopThread, run_id: str, settings: FeatureCloudConfig
    ) -> None:
        assert site.ssh is not None
        self.name = site.name
        self.target = site.ssh
        self._settings = settings
        self._cli = ""
        self._env_file = site.env_file
        self._loop = loop
        self._run_folder = hashlib.sha256(run_id.encode()).hexdigest()[:12]
        self._session: SshSession | None = None
        self._python = ""
        self._remote_env = ""
        self._workdir = ""
        self._folder = ""
        self._scratches = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "ssh", "location": f"ssh://{self.target.address}"}

    def _need_session(self) -> SshSession:
        if self._session is None:
            raise SiteUnreachable(self.name, self.target.address, "not connected")
        return self._session

    def open(self) -> None:
        self._session = self._loop.call(connect(self.name, self.target))
        session = self._session
        self._workdir = self._loop.call(remote_home_path(session, self.target.workdir))
        cli = cli_wheelhouse(self._settings)
        ready = self._loop.call(
            provision_featurecloud(session, self._workdir, self._settings, agent_wheelhouse(), cli)
        )
        self._python = f"{ready.agent.env}/bin/python"
        self._cli = ready.cli
        self._folder = f"{self._workdir}/fc-runs/{self._run_folder}"
        self._shell(f"umask 077 && mkdir -p {shlex.quote(self._folder)}")
        if self._env_file is None:
            self._remote_env = f"{self._workdir}/{SITE_ENV}"
        else:
            self._remote_env = f"{self._folder}/{SITE_ENV}"
            self._loop.call(upload_secret(session, self._env_file, self._remote_env))

    def data_dir(self) -> str:
        return f"{self._workdir}/{DATA_DIR}"

    def featurecloud_cli(self) -> str:
        return self._cli

    def _shell(self, command: str) -> None:
        result = self._loop.call(self._need_session().run(command))
        if result.exit_status != 0:
            raise SiteUnreachable(
                self.name, self.target.address, f"{command!r} failed: {result.stderr}"
            )

    def fc(self, args: Sequence[str], stdin: str = "") -> Answer:
        command = shlex.join(
            [self._python, "-m", "fedsim", "fc", *args, "--env-file", self._remote_env]
        )
        done = self._loop.call(self._run(command, stdin))
        return Answer(int(done.exit_status or 0), str(done.stdout), str(done.stderr))

    async def _run(self, command: str, stdin: str) -> asyncssh.SSHCompletedProcess:
        try:
            return await self._need_session().connection.run(command, input=stdin, check=False)
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(self.name, self.target.address, str(exc)) from exc

    def put_files(self, files: Sequence[Path], label: str) -> list[str]:
        remote = f"{self._folder}/{label}"
        self._shell(f"mkdir -p {shlex.quote(remote)}")
        self._loop.call(self._sftp_put(files, remote))
        return [f"{remote}/{f.name}" for f in files]

    async def _sftp_put(self, files: Sequence[Path], remote: str) -> None:
        try:
            async with self._need_session().connection.start_sftp_client() as sftp:
                for file in files:
                    await sftp.put(str(file), f"{remote}/{file.name}")
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(self.name, self.target.address, f"upload failed: {exc}") from exc

    def scratch(self, label: str) -> str:
        self._scratches += 1
        folder = f"{self._folder}/{label}-{self._scratches}"
        self._shell(f"mkdir -p {shlex.quote(folder)}")
        return folder

    def fetch(self, remote: str, local: Path) -> None:
        self._loop.call(self._sftp_get(remote, local))

    async def _sftp_get(self, remote: str, local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        try:
            async with self._need_session().connection.start_sftp_client() as sftp:
                for name in await sftp.listdir(remote):
                    if name not in (".", ".."):
                        await sftp.get(f"{remote}/{name}", str(local / name), recurse=True)
        except (OSError, asyncssh.Error) as exc:
            raise SiteUnreachable(
                self.name, self.target.address, f"download failed: {exc}"
            ) from exc

    def close(self) -> None:
        if self._session is None:
            return
        try:
            if self._folder:
                with contextlib.suppress(SiteUnreachable):
                    self._shell(f"rm -rf {shlex.quote(self._folder)}")
        finally:
            self._loop.call(self._session.close(), timeout=30)
            self._session = None


def client_sites(
    config: RunConfig, workdir: Path, run_id: str, loop: EventLoopThread
) -> dict[str, ClientSite]:
    """One client site per config site: over SSH where the site lives on another machine,
    else on this one (the config refuses the kinds that have no SSH path, such as Dask)."""
    return {
        s.name: SshClientSite(s, loop, run_id, config.featurecloud)
        if s.ssh is not None
        else LocalClientSite(s, workdir, config.featurecloud)
        for s in config.sites
    }
