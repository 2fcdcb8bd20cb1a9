"""Installing a wheelhouse at an SSH site, once: the agent's environment and each app's.

At the site, under its workdir ``W``: ``W/wheels/KEY`` holds a wheelhouse as shipped and
``W/envs/KEY`` the virtual environment made from it; each is complete only with its marker,
so an interrupted upload or install is redone, and one that is there is never touched again
(a second ``fedsim provision`` changes nothing). Installs take a lock at the site, so two runs
provisioning one host take turns. Nothing is downloaded at the site (``pip --no-index``).
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass

import asyncssh

from fedsim.appenv import COMPLETE_MARKER
from fedsim.errors import EnvironmentBuildError
from fedsim.logs import get_logger
from fedsim.sites.ssh_connect import SshSession
from fedsim.sites.wheelhouse import NO_DEPS_FILE, PIP_FILE, REQUIREMENTS_FILE, Wheelhouse

log = get_logger("provision")

INSTALL_TIMEOUT = 900.0
NO_PYTHON = 3
"""The install script's exit code when the site has no Python of the wanted version."""

_INSTALL = """set -eu
W={workdir}; KEY={key}; V={python}
ENV="$W/envs/$KEY"; WH="$W/wheels/$KEY"
mkdir -p "$W/envs"
exec 9>"$W/envs/.lock"
flock 9
if [ -f "$ENV/{marker}" ]; then echo present; exit 0; fi
PY=
for p in "python$V" python3; do
    if command -v "$p" >/dev/null 2>&1 &&
       [ "$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$V" ]; then
        PY=$(command -v "$p"); break
    fi
done
if [ -z "$PY" ]; then
    echo "no Python $V (python$V or python3) on the PATH" >&2; exit {no_python}
fi
rm -rf "$ENV"
"$PY" -m venv --without-pip "$ENV"
PIP="$WH/$(cat "$WH/{pip_file}")/pip"
"$ENV/bin/python" "$PIP" install --no-index --find-links "$WH" --disable-pip-version-check \\
    --no-input -q -r "$WH/{requirements}"
for wheel in $(cat "$WH/{no_deps}"); do
    "$ENV/bin/python" "$PIP" install --no-index --no-deps --disable-pip-version-check \\
        --no-input -q "$WH/$wheel"
done
"$PY" -c 'import sys; print(sys.version.split()[0])' > "$ENV/{marker}"
echo installed
"""


@dataclass(frozen=True)
class Provisioned:
    """One environment at one site: where it is and whether this call installed it."""

    env: str
    installed: bool
    uploaded_bytes: int


async def remote_home_path(session: SshSession, workdir: str) -> str:
    """The site's workdir as an absolute path (``~`` is the login's home), made 0700."""
    if workdir.startswith("~"):  # config allows only ~ and ~/...
        shell = '"$HOME"' + (shlex.quote(workdir[1:]) if len(workdir) > 1 else "")
    else:
        shell = shlex.quote(workdir)
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
    script = _INSTALL.format(
        workdir=shlex.quote(workdir),
        key=shlex.quote(wheelhouse.key),
        python=shlex.quote(wheelhouse.python),
        marker=COMPLETE_MARKER,
        no_python=NO_PYTHON,
        pip_file=PIP_FILE,
        requirements=REQUIREMENTS_FILE,
        no_deps=NO_DEPS_FILE,
    )
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
