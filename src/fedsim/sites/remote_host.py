"""The far end of a remote site: run at the site's host, it keeps that site for the run.

An SSH placement (``ssh.py``) starts this once per site and run, in the agent environment
that provisioning installed there, and talks to it over the SSH channel's stdin and stdout,
one JSON object per line. It holds the site exactly as a local site is held on the
orchestrator's machine (``local.py``: the network of its own, the app and agent sandboxes,
their uids, the seccomp filter and the limits), so a site is separated the same way wherever
it lives; only the files reach it differently (uploaded beforehand by the placement).

Requests: ``{"id": N, "op": ..., ...}``; every request gets ``{"reply": N, ...}`` with
``"error"`` when it failed. Unasked, it sends ``{"line": ..., "t": ...}`` for every line the
site prints (stamped with this host's clock: the orchestrator corrects for the offset) and
``{"exit": CODE, "failure": ..., "memory": {...}}`` when a step's agent ends. When its input
closes (the connection is gone), it stops the site and exits: nothing of a run stays behind.
After a ``close`` the orchestrator removes the run's folder at this host itself; if the
connection went without one (the orchestrator or its worker died), this host removes it, the
token and the sealed secrets in it with it (``run_folder`` of the ``open`` request). A link
cut without a word ends no session (sshd keeps it unless told to probe), so an ``open`` with
``lost_after`` makes this host end itself the same way when the orchestrator has sent
nothing, not even its heartbeat (``{"op": "heartbeat"}``, unanswered), for that long.
Imports only what the agent environment holds (no config, no relay server).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fedsim.agent.launch import AgentLaunch
from fedsim.logs import FIELD_SEPARATOR
from fedsim.sites.bare import BarePlacement
from fedsim.sites.base import AppBundle, SiteStep
from fedsim.sites.limits import Limits
from fedsim.sites.local import LocalPlacement
from fedsim.sites.local_step import LocalRunningSite
from fedsim.sites.sandbox import running_as_root
from fedsim.sites.seccomp import write_filter
from fedsim.sites.uids import UidBlock

WATCH_INTERVAL = 0.05
HEARTBEAT = "heartbeat"
HEARTBEAT_INTERVAL = 5.0
"""How often an SSH placement writes its heartbeat to the site host."""
LOST_AFTER = 20.0
"""Silence for this long (four heartbeats missed, outside any request) and the host ends."""


class Channel:
    """Writes whole JSON lines to the orchestrator, from any thread."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._muted = False

    def mute(self) -> None:
        """Drop every message from now on: the orchestrator is gone, and with a cut link a
        write blocks for ever once the pipe is full (a writer blocked so holds the lock)."""
        self._muted = True

    def send(self, message: dict[str, Any]) -> None:
        if self._muted:
            return
        text = json.dumps(message, separators=(",", ":"))
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def line(self, line: str) -> None:
        self.send({"line": line, "t": time.time()})


class _ToChannel(logging.Handler):
    """fedsim's own records at this host (limits, cleanup) become the site's lines."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.INFO)
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().replace("\n", " ")
        self._channel.line(FIELD_SEPARATOR.join(("site", record.levelname, message)))


class Silence:
    """Ends this host with SIGTERM (the loop's end then stops the site and removes the run's
    folder) once nothing came from the orchestrator for ``lost_after`` seconds while the
    host waited for it; the time a request takes does not count, as the lines that come
    meanwhile are read only after it. The channel is muted first: nothing reads it."""

    def __init__(self, lost_after: float, channel: Channel) -> None:
        self._lost_after = lost_after
        self._channel = channel
        self._last = time.monotonic()
        self._busy = False
        threading.Thread(target=self._watch, name="silence", daemon=True).start()

    def heard(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self._busy = True
        try:
            yield
        finally:
            self._last, self._busy = time.monotonic(), False

    def _watch(self) -> None:
        while self._busy or time.monotonic() - self._last < self._lost_after:
            time.sleep(1.0)
        self._channel.mute()
        os.kill(os.getpid(), signal.SIGTERM)


class SiteHost:
    """One site for the length of a run, driven by requests (see the module docstring)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._placement: LocalPlacement | None = None
        self._uids: UidBlock | None = None
        self._running: LocalRunningSite | None = None
        self._watcher: threading.Thread | None = None
        self.run_folder: Path | None = None
        """Everything of the run at this host (``open``); left to the orchestrator after a
        ``close``."""
        self.silence: Silence | None = None
        """Set by an ``open`` with ``lost_after``."""

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ValueError(f"unknown request {op!r}")
        return handler(request) or {}

    def op_open(self, request: dict[str, Any]) -> dict[str, Any]:
        """The site's folder and network; answers with this host's clock and whether the
        site is sandboxed (a host without bubblewrap gets a bare site: ``bare.py``)."""
        site_dir = Path(request["dir"])
        site_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_folder = Path(request["run_folder"])
        if request.get("lost_after") is not None:
            self.silence = Silence(float(request["lost_after"]), self._channel)
        limits = Limits(**request["limits"])
        sandboxed = shutil.which("bwrap") is not None
        if sandboxed:
            self._uids = UidBlock(1) if running_as_root() else None
            self._placement = LocalPlacement(
                request["site"],
                site_dir,
                limits=limits,
                uids=None if self._uids is None else self._uids.site(0),
                seccomp_filter=write_filter(site_dir.parent / f"{request['site']}.seccomp.bpf"),
                run_id=request["run_id"],
            )
        else:
            self._placement = BarePlacement(
                request["site"], site_dir, limits=limits, run_id=request["run_id"]
            )
        self._placement.open()
        return {"time": time.time(), "sandboxed": sandboxed}

    def _site(self) -> LocalPlacement:
        if self._placement is None:
            raise ValueError("the site is not open")
        return self._placement

    def op_prepare(self, request: dict[str, Any]) -> None:
        self._site().prepare(AppBundle(Path(request["app_dir"]), Path(request["env"])))

    def op_inputs(self, request: dict[str, Any]) -> None:
        self._site().put_inputs([Path(p) for p in request["inputs"]])

    def op_spawn(self, request: dict[str, Any]) -> None:
        site = self._site()
        env_file = request.get("env_file")
        step = SiteStep(
            app=AppBundle(Path(request["app_dir"]), Path(request["env"])),
            relay_socket=Path(request["relay_socket"]),
            output_dir=Path(request["output_dir"]),
            token=request["token"],
            env_file=None if env_file is None else Path(env_file),
        )
        launch = AgentLaunch.from_json(request["launch"])
        # sshd made the forward's socket for this login only; the agent runs as its own uid,
        # and the folder around it is private
        step.relay_socket.chmod(0o666)
        self._running = site.spawn(launch, step, self._channel.line)
        self._watcher = threading.Thread(
            target=self._watch, args=(self._running,), name="watch", daemon=True
        )
        self._watcher.start()

    def _watch(self, running: LocalRunningSite) -> None:
        """Says once when the step's agent ended, with how and why."""
        while (code := running.poll()) is None:
            time.sleep(WATCH_INTERVAL)
        self._channel.send({"exit": code, "failure": running.failure(), "memory": running.memory()})

    def op_stop(self, _: dict[str, Any]) -> None:
        if self._running is not None:
            self._running.stop()

    def op_collect(self, request: dict[str, Any]) -> dict[str, Any]:
        """After the step: the output made safe to copy (links and the like pruned, given
        back to this user); the placement then downloads it."""
        self.op_stop(request)
        skipped = self._site().fetch_outputs(Path(request["output_dir"]))
        return {"skipped": [[s.path, s.reason] for s in skipped]}

    def op_close(self, _: dict[str, Any]) -> None:
        """The site stopped and its place removed before the answer: the orchestrator then
        removes the run's folder, which must not race with this host still removing within
        it (under load it did, and the folder stayed). The loop then ends."""
        self.close()

    def close(self) -> None:
        """Idempotent: the close request does it, and the loop's end again."""
        placement, uids = self._placement, self._uids
        self._placement = self._uids = None
        if placement is not None:
            placement.close()
        if uids is not None:
            uids.close()


def serve(inp: IO[str], out: IO[str]) -> None:
    channel = Channel(out)
    root = logging.getLogger("fedsim")
    root.addHandler(_ToChannel(channel))
    root.setLevel(logging.INFO)
    host = SiteHost(channel)
    closed = False
    try:
        for text in inp:
            if host.silence is not None:
                host.silence.heard()
            if not text.strip():
                continue
            request = json.loads(text)
            if request.get("op") == HEARTBEAT:
                continue
            with host.silence.busy() if host.silence is not None else contextlib.nullcontext():
                try:
                    answer = {"reply": request.get("id"), **host.handle(request)}
                except Exception as exc:  # the orchestrator reports it, naming the site
                    error = f"{type(exc).__name__}: {exc}"
                    answer = {"reply": request.get("id"), "error": error}
            channel.send(answer)
            if request.get("op") == "close":
                closed = True
                break
    finally:
        host.close()
        if not closed and host.run_folder is not None:
            shutil.rmtree(host.run_folder, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # the connection dropping hangs up on us: stop the site on the way out
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
