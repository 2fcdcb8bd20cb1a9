"""A site without a sandbox, for a host that has no bubblewrap: said plainly, never hidden.

Partners' machines do not always have bubblewrap, and a rehearsal that cannot run there is
worth less than one that runs and says what it could not do. Such a site keeps what the
kernel gives without bwrap (``unshare``, util-linux): a network of its own with loopback only
(sites and the app reach nothing but the relay's socket), and a mount namespace in which the
app finds its ``/mnt/input`` and ``/mnt/output`` and its env file as in a sandbox. What it
loses: the app and the agent share namespaces and the login's uid (the app can read the
agent's token and reach the relay itself), the host's files are visible to the app, and no
seccomp filter or per-site uid applies. Limits hold through rlimits only. The summary says
``"sandboxed": false`` and the console warns once per site.

Built on the local site's code: the same placement (folders, inputs, outputs) and the same
running site (its watch on the agent, the app and the output limit), with the two sandboxes
replaced by processes entering the site's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedsim.processes import spawn_line_reader
from fedsim.sites.base import AgentLaunch, LineSink, SiteStep
from fedsim.sites.limits import Limits, rlimit_prefix
from fedsim.sites.local import LocalPlacement
from fedsim.sites.local_step import LAUNCHER, LocalRunningSite, SiteContext
from fedsim.sites.sandbox import running_as_root
from fedsim.sites.sandboxes import SandboxProcess, start_reader, write_private

APP_ENV_DIR = "/run/fedsim-app"
"""Where the app's launcher looks for the site's env file, as in a sandbox."""
SETUP = f"""set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
ip link set lo up
mount -t tmpfs -o mode=0755 fedsim-mnt /mnt
mkdir /mnt/input /mnt/output
mount -t tmpfs -o mode=0755 fedsim-run /run
mkdir -m 0700 {APP_ENV_DIR}
echo ready
exec sleep infinity
"""
STEP = f"""set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umount /mnt/input 2>/dev/null || true
umount /mnt/output 2>/dev/null || true
mount --bind "$1" /mnt/input
mount -o remount,bind,ro /mnt/input
mount --bind "$2" /mnt/output
rm -f {APP_ENV_DIR}/site.env
if [ -n "$3" ]; then (umask 077 && cat "$3" > {APP_ENV_DIR}/site.env); fi
"""


def unsandboxed_warning(site: str) -> str:
    return (
        f"site {site}: no bubblewrap on this host: the site runs UNSANDBOXED (own network and "
        "mounts only; its app shares the agent's uid and sees the host's files)"
    )


class _Group(SandboxProcess):
    """A process started in its own session: killed with everything it started."""

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        super().kill()


def _start(
    argv: list[str], on_line: LineSink, tag: str | None, name: str, **options: Any
) -> _Group:
    process = spawn_line_reader(argv, start_new_session=True, **options)
    assert process.stdout is not None
    return _Group(process, None, start_reader(process.stdout, on_line, tag, name))


class _BareContext(SiteContext):
    def enter(self, wd: Path | None = None) -> list[str]:
        """Into the site's network and mounts (and its user namespace, when not root);
        entering a mount namespace starts at ``/`` unless ``wd`` says where."""
        user = [] if running_as_root() else ["--user", "--preserve-credentials"]
        where = [] if wd is None else [f"--wd={wd}"]
        target = f"--target={self.holder_pid}"
        return ["/usr/bin/nsenter", target, *user, "--net", "--mount", *where, "--"]


class BareRunningSite(LocalRunningSite):
    """A step's app and agent as two processes in the site's namespaces."""

    _site: _BareContext

    def _start_app(self, launch: AgentLaunch, on_line: LineSink) -> SandboxProcess:
        site, step = self._site, self._step
        shutil.copytree(step.app.app_dir, self._app_copy, symlinks=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        env_file = "" if step.env_file is None else str(step.env_file)
        subprocess.run(
            [*site.enter(), "/bin/sh", "-c", STEP, "step", str(self._input_dir),
             str(self.output_dir), env_file],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        argv = [str(step.app.env / "bin" / "python"), str(LAUNCHER)]
        return _start(
            [*rlimit_prefix(site.limits, None), *site.enter(self._app_copy), *argv],
            on_line,
            "app",
            f"site-{site.name}-app",
            env={
                "FEDSIM_SHORTEN_WAITS": "1" if launch.shorten_waits else "0",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(self._app_copy),
            },
        )

    def _start_agent(self, launch: AgentLaunch, on_line: LineSink) -> SandboxProcess:
        site = self._site
        launch_file = site.control_dir / "launch.json"
        token_file = site.control_dir / "token"
        where = launch.at_socket(str(self._step.relay_socket))
        write_private(launch_file, where.to_json(), None)
        write_private(token_file, self._step.token, None)
        argv = [sys.executable, "-m", "fedsim.agent", str(launch_file), str(token_file)]
        return _start(
            [*site.enter(), *argv],
            on_line,
            None,
            f"site-{site.name}-agent",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        )


class BarePlacement(LocalPlacement):
    """A local placement whose site has namespaces but no sandboxes (see the module doc)."""

    def __init__(self, name: str, site_dir: Path, *, limits: Limits, run_id: str) -> None:
        super().__init__(
            name, site_dir, limits=limits, uids=None, seccomp_filter=Path("/dev/null"),
            run_id=run_id,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "sandboxed": False}

    def open(self) -> None:
        super().open()
        assert self._context is not None
        self._context = _BareContext(**vars(self._context))

    def _running_site(self, step: SiteStep) -> LocalRunningSite:
        assert isinstance(self._context, _BareContext)
        return BareRunningSite(
            self._context, step, self._step_dir() / "input", self._step_dir() / "app"
        )

    def _start_network(self) -> subprocess.Popen[str]:
        """The site's namespaces, held by a process that set them up: loopback up, ``/mnt``
        and ``/run`` fresh inside (the host's stay as they are)."""
        user = [] if running_as_root() else ["--user", "--map-root-user"]
        return self._hold(
            ["/usr/bin/unshare", *user, "--net", "--mount", "--propagation", "private",
             "--", "/bin/sh", "-c", SETUP],
        )  # fmt: skip
