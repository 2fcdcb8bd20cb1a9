"""Provisioning an SSH site for featurecloud.ai: what the official FeatureCloud controller
needs there, set up once, before any project is made.

At each site, after fedsim's agent environment (which holds ``fedsim fc``), in this order:

1. **Reach**: the site must reach the website and the registry the controller pulls its
   images from (``[featurecloud]`` ``website`` and ``registry`` in the config, so tests
   point them at a stand-in; ``reach.py`` goes to those addresses only). An air-gapped site
   stops here, with its name and what it could not reach.
2. **Docker**: a site with a ``docker`` (on the PATH or in ``~/.local/bin``) is left as it
   is; one without gets Debian's ``docker.io`` (``apt-get``, as root or with ``sudo -n``;
   a clear error if neither, or if the site has no ``apt-get``). Then Docker's engine must
   answer ``docker info``; if it does not, it is started (``systemctl``, else ``service``).
   Installing real Docker is not exercised by fedsim's tests: their hosts share the test
   machine's system folders, where no engine can run; they run this script against
   stand-ins of ``docker``, ``apt-get`` and ``service`` (and never as a non-root user).
3. **The featurecloud CLI**: the ``FeatureCloud`` package pins old libraries (click,
   urllib3, docker), so it never enters fedsim's environment: it gets an environment of
   its own at the site, made like an app's from a wheelhouse built here (nothing is
   downloaded there), and its ``featurecloud`` is the one ``fedsim fc controller`` runs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from fedsim.appenv import ensure_app_env
from fedsim.config import FeatureCloudConfig, RunConfig
from fedsim.errors import EnvironmentBuildError
from fedsim.featurecloud.site_setup import SiteNotReady
from fedsim.logs import get_logger
from fedsim.sites.install import INSTALL_TIMEOUT
from fedsim.sites.provision import Provisioned, SiteProvisioning, on_ssh_sites, provision
from fedsim.sites.ssh_connect import SshSession
from fedsim.sites.wheelhouse import Wheelhouse, agent_wheelhouse, app_wheelhouse

log = get_logger("provision")

CLI_REQUIREMENTS = Path(__file__).with_name("cli-requirements.txt")
CLI_ENV_NAME = "featurecloud-cli"
REACH_TIMEOUT = 60.0

_DOCKER = r"""set -u
PATH="$PATH:$HOME/.local/bin:/usr/local/sbin:/usr/sbin:/sbin"
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
    else
        echo "fedsim cannot $WHAT here: it logs in as $(id -un), which is neither root nor" \
             "allowed passwordless sudo (sudo -n)" >&2
        exit 1
    fi
}
tail_of() { tail -n 5 "$1" | tr '\n' ' '; }
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
STATE=present
if ! command -v docker >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "no Docker here, and no apt-get to install it with: install Docker Engine" \
             "(https://docs.docker.com/engine/install/) and let $(id -un) use it" >&2
        exit 1
    fi
    WHAT="install Docker (apt-get install docker.io)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -q && apt-get install -y -q docker.io' >"$LOG" 2>&1; then
        echo "apt-get install docker.io failed: $(tail_of "$LOG")" >&2
        exit 1
    fi
    STATE=installed
fi
if ! docker info >/dev/null 2>&1; then
    WHAT="start Docker's engine"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl start docker >"$LOG" 2>&1
    elif command -v service >/dev/null 2>&1; then
        as_root service docker start >"$LOG" 2>&1
    else
        echo "Docker is installed ($(command -v docker)) but its engine does not answer" \
             "docker info, and there is no systemctl or service here to start it" >&2
        exit 1
    fi
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >"$LOG" 2>&1; then
        echo "Docker is installed ($(command -v docker)) but its engine does not answer" \
             "docker info even after starting it: $(tail_of "$LOG") (if the engine runs," \
             "add $(id -un) to the docker group)" >&2
        exit 1
    fi
    [ "$STATE" = present ] && STATE=started
fi
echo "$STATE"
"""


@dataclass(frozen=True)
class FeatureCloudSite:
    """What provisioning left at a site for featurecloud.ai."""

    agent: Provisioned
    """fedsim's agent environment there: its Python runs ``fedsim fc`` and ``reach.py``."""
    cli: str
    """The ``featurecloud`` program of the CLI's own environment there."""
    docker: str
    """``present`` (left as it was), ``installed`` or ``started`` (its engine)."""
    environment: Provisioned
    """The CLI's environment."""


def cli_env(settings: FeatureCloudConfig) -> Path:
    """The CLI's environment on this machine, built on first use (as an app's, in fedsim's
    cache): what a local site runs, and what the SSH sites' wheelhouse is made from."""
    requirements = settings.cli_requirements or CLI_REQUIREMENTS
    return ensure_app_env(Path(CLI_ENV_NAME), requirements=requirements)


def cli_wheelhouse(settings: FeatureCloudConfig) -> Wheelhouse:
    """The CLI's environment (built here first, when needed) as a wheelhouse for the sites."""
    return app_wheelhouse(cli_env(settings))


async def check_reach(session: SshSession, python: str, settings: FeatureCloudConfig) -> None:
    """Raises ``SiteNotReady`` naming each address the site cannot reach."""
    targets = [settings.website, settings.registry]
    command = shlex.join([python, "-m", "fedsim.featurecloud.reach", *targets])
    result = await session.run(command, timeout=REACH_TIMEOUT)
    if result.exit_status == 0:
        return
    failed = "; ".join(str(result.stdout).strip().splitlines()) or str(result.stderr).strip()
    raise SiteNotReady(
        f"cannot reach {failed}: featurecloud.ai needs the internet at every site (its "
        "website, and the registry the FeatureCloud controller pulls its images from)"
    )


async def ensure_docker(session: SshSession) -> str:
    """Docker at the site, installed and its engine started when needed; what was done."""
    result = await session.run(f"sh -c {shlex.quote(_DOCKER)}", timeout=INSTALL_TIMEOUT)
    if result.exit_status != 0:
        raise SiteNotReady(" ".join(str(result.stderr).split()) or "Docker: (no message)")
    state = str(result.stdout).strip().splitlines()[-1]
    log.info("site %s: Docker %s", session.site, state)
    return state


async def provision_featurecloud(
    session: SshSession,
    workdir: str,
    settings: FeatureCloudConfig,
    agent: Wheelhouse,
    cli: Wheelhouse,
) -> FeatureCloudSite:
    """The agent's environment, then reach, Docker and the CLI, in that order (see the
    module's docstring): what a run's SSH site and ``fedsim provision`` both do."""
    agent_env = await provision(session, agent, workdir)
    await check_reach(session, f"{agent_env.env}/bin/python", settings)
    docker = await ensure_docker(session)
    environment = await provision(session, cli, workdir)
    program = f"{environment.env}/bin/featurecloud"
    answer = await session.run(f"{shlex.quote(program)} --version")
    if answer.exit_status != 0:
        raise EnvironmentBuildError(
            f"the featurecloud CLI installed at {program} does not run: "
            f"{' '.join(str(answer.stderr).split()[-30:])}"
        )
    return FeatureCloudSite(agent_env, program, docker, environment)


def provision_featurecloud_sites(config: RunConfig) -> list[SiteProvisioning]:
    """Every SSH site of a featurecloud.ai config made ready: fedsim's agent environment
    (for ``fedsim fc``), then reach, Docker and the CLI. The apps run in FeatureCloud's
    controller, so no app environment is installed. Raises the first site's error, naming
    the site and where it is."""
    if not any(s.ssh is not None for s in config.sites):
        return []
    settings = config.featurecloud
    agent, cli = agent_wheelhouse(), cli_wheelhouse(settings)

    async def work(session: SshSession, workdir: str) -> tuple[dict[str, Provisioned], str | None]:
        try:
            site = await provision_featurecloud(session, workdir, settings, agent, cli)
        except SiteNotReady as exc:
            raise SiteNotReady(
                f"site {session.site} (ssh://{session.target.address}): {exc}"
            ) from exc
        return {agent.key: site.agent, f"{CLI_ENV_NAME} ({cli.key})": site.environment}, site.docker

    return on_ssh_sites(config, work)
