"""A site on this machine, inside a bubblewrap sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import fedsim
from fedsim.processes import spawn_line_reader
from fedsim.safefiles import copy_inputs  # never follows a link below a named input
from fedsim.sites.base import AgentLaunch, LineSink
from fedsim.sites.sandbox import CONTROL_DIR, SandboxSpec, build_command

RELAY_SOCKET_NAME = "relay.sock"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def fedsim_runtime_dirs() -> list[Path]:
    """The trees the agent needs to run: fedsim's Python, its packages and fedsim itself."""
    return [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(fedsim.__file__).resolve().parent.parent,
    ]


class LocalSite:
    def __init__(self, name: str, site_dir: Path, private_dir: Path, relay_socket: Path) -> None:
        self.name = name
        self.output_dir = site_dir / "output"
        self.input_dir = private_dir / "input"
        self._control = private_dir / "control"
        self._relay_socket = relay_socket
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._sandbox_init: int | None = None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._control.mkdir(parents=True, mode=0o700, exist_ok=True)

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        copy_inputs(inputs, self.input_dir, overrides)

    def start(self, launch: AgentLaunch, on_line: LineSink) -> None:
        control_files = {
            "agent.json": self._control / "agent.json",
            "token": self._control / "token",
        }
        config = {
            **launch.config,
            "relay_socket": f"{CONTROL_DIR}/{RELAY_SOCKET_NAME}",
            "token_file": f"{CONTROL_DIR}/token",
            "app_dir": "/app",
        }
        if launch.env_file is not None:
            # bound straight from where the site's owner keeps it: never copied, never read here
            control_files["site.env"] = launch.env_file
            config["env_file"] = f"{CONTROL_DIR}/site.env"
        _write_private(control_files["agent.json"], json.dumps(config))
        _write_private(control_files["token"], launch.token)
        spec = SandboxSpec(
            hostname=self.name,
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            app_dir=launch.app_dir,
            runtime_dirs=[*fedsim_runtime_dirs(), launch.app_env, *_venv_base_dirs(launch.app_env)],
            control_files=control_files,
            sockets={RELAY_SOCKET_NAME: self._relay_socket},
        )
        argv = [sys.executable, "-m", "fedsim.agent", f"{CONTROL_DIR}/agent.json"]
        info_read, info_write = os.pipe()
        self._process = spawn_line_reader(
            build_command(spec, argv, info_fd=info_write),
            pass_fds=(info_write,),
            start_new_session=True,  # Ctrl-C reaches the orchestrator only; it stops sites itself
        )
        os.close(info_write)
        with os.fdopen(info_read, encoding="utf-8") as info:
            text = info.read()  # written by bwrap right after it made the namespaces
        self._sandbox_init = json.loads(text)["child-pid"] if text.strip() else None
        self._reader = threading.Thread(
            target=self._pump, args=(self._process, on_line), name=f"site-{self.name}", daemon=True
        )
        self._reader.start()

    @staticmethod
    def _pump(process: subprocess.Popen[str], on_line: LineSink) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line)

    def poll(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        # Killing the sandbox's pid 1 kills every process in the site's pid namespace;
        # bwrap outside then reaps it and exits. (Killing bwrap first would orphan pid 1
        # to an init that may never reap it.) --die-with-parent covers a crash of fedsim.
        if self._process is None:
            return
        if self._process.poll() is None and self._sandbox_init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._sandbox_init, signal.SIGKILL)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def collect(self) -> None:
        """The output directory is bind-mounted into the sandbox: it is already here."""


def _venv_base_dirs(env: Path) -> list[Path]:
    """The interpreter a virtual environment was made from (its ``home``), to bind as well."""
    cfg = env / "pyvenv.cfg"
    if not cfg.is_file():
        return []
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return [Path(value.strip()).parent]
    return []
