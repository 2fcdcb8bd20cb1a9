"""``fedsim doctor``: is every site of a config ready to run, and if not, why.

Why a command of its own: a run that fails at its tenth site because a partner's host has no
Python, a full disk or a clock an hour off wastes the other nine sites' time and hides the
cause in a log. Every check here is read-only and quick; SSH sites are checked at once.

For a local site the checks look at this machine (fedsim's own Python, the temp folder's
disk, a trivial bubblewrap sandbox). For an SSH site they run over one connection: the
host's ``python3``, the disk under the site's workdir, whether fedsim is importable there,
whether ``bwrap`` exists, and the clock against this one. Dask sites: ``doctor_dask.py``.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fedsim import __version__
from fedsim.appenv import COMPLETE_MARKER
from fedsim.config import DASK_LOCATION, RunConfig, SiteConfig, SshTarget
from fedsim.doctor_dask import check_dask_sites
from fedsim.errors import SiteUnreachable
from fedsim.health import SiteHealth, python_problem
from fedsim.logs import get_logger
from fedsim.sites.ssh_connect import CONNECT_TIMEOUT, SshSession, connect_all, workdir_shell

log = get_logger("doctor")

NOT_PROVISIONED = "not provisioned"
SANDBOX_PROBE_TIMEOUT = 20.0
COMMAND_TIMEOUT = 30.0


def _bwrap_works() -> tuple[bool, str | None]:
    """Run ``true`` in a sandbox with the namespaces a site gets: bwrap may be installed yet
    unusable (user namespaces disabled, a seccomp profile of a container)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False, "bubblewrap (bwrap) is not installed; local sites need it"
    argv = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "true",
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=SANDBOX_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap cannot start a sandbox: {exc}"
    if result.returncode != 0:
        return False, f"bwrap cannot start a sandbox: {result.stderr.strip()}"
    return True, None


def check_local(site: SiteConfig) -> SiteHealth:
    """A local site lives on this machine: its Python is fedsim's, its files go under the
    temp folder, and it needs a working bubblewrap."""
    health = SiteHealth(site=site.name, location="local", reachable=True, agent=__version__)
    health.python = platform.python_version()
    health.disk_free = shutil.disk_usage(tempfile.gettempdir()).free
    health.sandbox, why = _bwrap_works()
    if why:
        health.problems.append(why)
    health.clock_offset = 0.0
    return health


def probe_script(workdir: str) -> str:
    """One remote shell script, one round trip: ``key=value`` lines, parsed by
    :func:`_parse_probe`. The workdir need not exist yet (provisioning makes it): the disk
    is measured at its nearest existing parent."""
    return f"""
d={workdir_shell(workdir)}
while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
echo "disk_kib=$(df -Pk -- "$d" | awk 'NR==2 {{print $4}}')"
echo "python=$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null)"
for e in {workdir_shell(workdir)}/envs/agent-*; do
    [ -f "$e/{COMPLETE_MARKER}" ] || continue
    agent=$("$e/bin/python" -c 'import fedsim; print(fedsim.__version__)' 2>/dev/null) && break
done
echo "agent=${{agent:-}}"
b=$(command -v bwrap 2>/dev/null || true)
if [ -n "$b" ] && [ -f "$b" ] && [ -x "$b" ]; then echo sandbox=yes; else echo sandbox=no; fi
"""


def _parse_probe(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


async def _clock_offset(session: SshSession) -> float | None:
    """The remote clock minus ours at the moment it was read, taken as the middle of the
    round trip; the best of three, the one with the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        start, start_mono = time.time(), time.monotonic()
        result = await session.run("date +%s.%N", timeout=COMMAND_TIMEOUT)
        round_trip = time.monotonic() - start_mono
        try:
            remote = float(str(result.stdout).strip())
        except ValueError:
            return None
        offset = remote - (start + round_trip / 2)
        if best is None or round_trip < best[0]:
            best = (round_trip, offset)
    return None if best is None else best[1]


async def _check_session(session: SshSession, health: SiteHealth) -> None:
    target = session.target
    health.reachable = True
    if session.accepted_new_key:
        health.notes.append(f"new host key trusted and added to {session.known_hosts_file}")
    result = await session.run(probe_script(target.workdir), timeout=COMMAND_TIMEOUT)
    values = _parse_probe(str(result.stdout))
    health.python = values.get("python") or None
    problem = python_problem(health.python)
    if problem:
        health.problems.append(problem)
    kib = values.get("disk_kib", "")
    health.disk_free = int(kib) * 1024 if kib.isdigit() else None
    if health.disk_free is None:
        health.problems.append(f"cannot measure the disk under {target.workdir}")
    health.agent = values.get("agent") or NOT_PROVISIONED
    health.sandbox = values.get("sandbox") == "yes"
    if not health.sandbox:
        health.notes.append("no bwrap: the site would run unsandboxed")
    health.clock_offset = await _clock_offset(session)


async def check_ssh_sites(
    sites: Sequence[tuple[SiteConfig, SshTarget]],
    *,
    timeout: float = CONNECT_TIMEOUT,
    ssh_config: Sequence[Path] | None = None,
) -> list[SiteHealth]:
    """Every SSH site at once; a site that cannot be reached is a row saying why."""
    targets = {site.name: target for site, target in sites}
    sessions = await connect_all(targets, timeout=timeout, ssh_config=ssh_config)
    rows = {
        site.name: SiteHealth(site=site.name, location=site.location or "") for site, _ in sites
    }

    async def one(name: str, session: SshSession | SiteUnreachable) -> None:
        health = rows[name]
        if isinstance(session, SiteUnreachable):
            health.problems.append(session.reason)
            return
        try:
            await _check_session(session, health)
        except SiteUnreachable as exc:
            health.problems.append(exc.reason)
        finally:
            await session.close()

    await asyncio.gather(*(one(name, session) for name, session in sessions.items()))
    return [rows[site.name] for site, _ in sites]


def check_sites(
    config: RunConfig,
    *,
    timeout: float = CONNECT_TIMEOUT,
    ssh_config: Sequence[Path] | None = None,
) -> list[SiteHealth]:
    """One row per site of ``config``, in the config's order."""
    remote = [(site, target) for site in config.sites if (target := site.ssh) is not None]
    checked = {
        row.site: row
        for row in asyncio.run(check_ssh_sites(remote, timeout=timeout, ssh_config=ssh_config))
    }
    dask = [site for site in config.sites if site.location == DASK_LOCATION]
    checked.update((row.site, row) for row in check_dask_sites(config.dask, dask, timeout=timeout))
    local_probe: SiteHealth | None = None
    rows = []
    for site in config.sites:
        if site.name in checked:
            rows.append(checked[site.name])
            continue
        if local_probe is None:  # the same machine for every local site: probe it once
            local_probe = check_local(site)
        rows.append(
            replace(
                local_probe,
                site=site.name,
                problems=list(local_probe.problems),
                notes=list(local_probe.notes),
            )
        )
    for row in rows:
        log.info("site %s: %s", row.site, "ready" if row.ready else "; ".join(row.problems))
    return rows
