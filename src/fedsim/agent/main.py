"""The agent's loop: start the app, set it up, move its messages until it finishes.

Two threads share the work so that neither direction waits for the other: the main thread
polls ``/api/status`` and forwards what the app emits; the inbox thread long-polls the
relay and delivers what arrives. Each has its own HTTP clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from dotenv import dotenv_values

from fedsim.agent.exchange import Exchange
from fedsim.agent.protocol import AppStatus, parse_status, setup_body
from fedsim.logs import configure_agent_stdout, get_logger
from fedsim.processes import spawn_line_reader
from fedsim.relay.client import RelayClient

log = get_logger("agent")
app_log = get_logger("app")

LAUNCHER = Path(__file__).with_name("app_launcher.py")
STATUS_ACCESS_LINE = re.compile(r'"GET /api/status HTTP/1\.[01]" 200')
"""Bottle logs every request; at our poll rate the status polls would drown the app's log."""


class AgentError(RuntimeError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    site: str
    clients: list[str]
    coordinator: str
    relay_socket: str
    token_file: str
    app_dir: str
    app_python: str
    poll_interval: float = 0.02
    shorten_waits: bool = False
    env_file: str | None = None
    seed: int | None = None
    startup_timeout: float = 120.0
    app_url: str = "http://localhost:5000"

    @classmethod
    def load(cls, path: str) -> AgentConfig:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def is_coordinator(self) -> bool:
        return self.site == self.coordinator


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        token = Path(config.token_file).read_text(encoding="utf-8").strip()
        # one set of clients per thread: the main loop's, and the inbox thread's
        self._relay_out = RelayClient(config.relay_socket, config.site, token)
        self._relay_in = RelayClient(config.relay_socket, config.site, token)
        self._relay_inbox_out = RelayClient(config.relay_socket, config.site, token)
        self._app_out = httpx.Client(base_url=config.app_url, timeout=30.0)
        self._exchange = Exchange(
            config.site,
            config.clients,
            config.coordinator,
            config.seed,
            app=httpx.Client(base_url=config.app_url, timeout=30.0),
            relay=self._relay_inbox_out,
        )
        self._stop = threading.Event()
        self._inbox_error: BaseException | None = None
        self._process: subprocess.Popen[str] | None = None

    # --- the app process ---------------------------------------------------------------

    def _app_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.config.env_file:
            # the site's secrets go to its own app only; they are never logged
            env.update(
                {k: v for k, v in dotenv_values(self.config.env_file).items() if v is not None}
            )
        env["FEDSIM_SHORTEN_WAITS"] = "1" if self.config.shorten_waits else "0"
        return env

    def _start_app(self) -> None:
        self._process = spawn_line_reader(
            [self.config.app_python, str(LAUNCHER)],
            cwd=self.config.app_dir,
            env=self._app_environment(),
        )
        threading.Thread(target=self._pump_app_output, name="app-output", daemon=True).start()
        log.info("started the app (pid %d)", self._process.pid)

    def _pump_app_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip() and not STATUS_ACCESS_LINE.search(line):
                app_log.info("%s", line.rstrip("\n"))

    def _check_app_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise AgentError(f"the app exited with code {code} before it reported finished")

    def _stop_app(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    # --- protocol --------------------------------------------------------------------------

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            self._check_app_alive()
            try:
                self._app_out.get("/api/status").raise_for_status()
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AgentError(
                    f"the app did not answer /api/status within {self.config.startup_timeout:.0f} s"
                )
            time.sleep(0.05)

    def _setup(self) -> None:
        body = setup_body(
            self.config.site,
            self.config.is_coordinator,
            self.config.clients,
            self.config.coordinator,
        )
        self._app_out.post("/api/setup", json=body).raise_for_status()
        log.info(
            "set up as %s of %d sites",
            "coordinator" if self.config.is_coordinator else "participant",
            len(self.config.clients),
        )

    def _status(self) -> AppStatus:
        response = self._app_out.get("/api/status")
        response.raise_for_status()
        return parse_status(response.content)

    def _forward(self, status: AppStatus) -> None:
        response = self._app_out.get("/api/data")
        response.raise_for_status()
        self._exchange.send(self._relay_out, status, response.content)

    def _inbox(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._relay_in.receive(wait=1.0)
                if message is not None:
                    self._exchange.receive(message)
        except BaseException as exc:  # handed to the main loop, which fails the site
            if not self._stop.is_set():
                self._inbox_error = exc

    def _drive(self) -> int:
        last_reported: dict[str, object] | None = None
        while True:
            self._check_app_alive()
            if self._inbox_error is not None:
                raise AgentError(f"delivering a message failed: {self._inbox_error}")
            status = self._status()
            self._exchange.template = status.template
            if status.display() != last_reported:
                last_reported = status.display()
                self._relay_out.report_status(last_reported)
            if status.failed:
                log.error(
                    "the app reported state error%s: %s (its log is above)",
                    "" if status.finished else " without finishing",
                    status.message,
                )
                return 1
            if status.finished:
                log.info("the app finished")
                return 0
            if status.available:
                self._forward(status)
                continue  # more items may be queued; each needs a fresh status first
            time.sleep(self.config.poll_interval)

    def _keep_aggregation_duties(self) -> None:
        """Stay, after the app finished, until every secure-aggregation round this site holds
        shares of has had its partial sum sent: a late site's share may still be on its way,
        and without this site's partial sum the coordinator would wait for ever. The run's
        own timeout (or stall detection) bounds the wait."""
        waiting = self._exchange.duties.outstanding()
        if waiting:
            log.info(
                "the app is done; staying for the secure aggregation of memo %s",
                ", ".join(repr(m) for m in waiting),
            )
        while waiting:
            if self._inbox_error is not None:
                raise AgentError(f"delivering a message failed: {self._inbox_error}")
            waiting = self._exchange.duties.wait(timeout=0.5)
        log.debug("no secure-aggregation duty left")

    def run(self) -> int:
        inbox = threading.Thread(target=self._inbox, name="inbox", daemon=True)
        try:
            self._start_app()
            self._wait_for_api()
            self._setup()
            inbox.start()
            code = self._drive()
            if code == 0:
                self._keep_aggregation_duties()
            return code
        except (AgentError, httpx.HTTPError, ValueError, KeyError) as exc:
            log.error("%s", exc)
            with contextlib.suppress(httpx.HTTPError):
                self._relay_out.report_status(
                    {"state": "error", "message": str(exc), "finished": True, "progress": None}
                )
            return 1
        finally:
            self._stop.set()
            self._stop_app()
            self._drain_app_output()
            self._report_memory()

    @staticmethod
    def _drain_app_output(timeout: float = 2.0) -> None:
        """Let the app's last lines (the error it printed just before it reported the error
        state, say) reach the site's log before the agent exits: once the app is stopped its
        output ends, and the thread that forwards it finishes."""
        for thread in threading.enumerate():
            if thread.name == "app-output":
                thread.join(timeout)

    def _report_memory(self) -> None:
        """Peak resident memory of the app (a waited-for child) and of the agent itself."""
        kib = 1024  # ru_maxrss is in KiB on Linux
        usage = {
            "app_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
            "agent_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        }
        log.info(
            "peak memory: app %.1f MiB, agent %.1f MiB",
            usage["app_peak_rss_bytes"] / 2**20,
            usage["agent_peak_rss_bytes"] / 2**20,
        )
        with contextlib.suppress(httpx.HTTPError):
            self._relay_out.report_memory(usage)


def main(argv: list[str]) -> int:
    configure_agent_stdout()
    if len(argv) != 1:
        print("usage: python -m fedsim.agent AGENT_CONFIG.json", file=sys.stderr)
        return 2
    try:
        config = AgentConfig.load(argv[0])
    except (OSError, TypeError, ValueError) as exc:
        logging.getLogger("fedsim.agent").error("cannot read the agent config: %s", exc)
        return 2
    return Agent(config).run()
