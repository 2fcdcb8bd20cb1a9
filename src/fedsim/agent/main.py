"""The agent's loop: wait for the app, set it up, move its messages until it finishes.

The app runs in a sandbox of its own, started by the site's placement; the agent reaches it
only on localhost:5000, in the site's network (``sites/local_step.py``) or through the site's
dialer (``app_dialer.py``). Two threads share the work so that neither
direction waits for the other: the main thread polls ``/api/status`` and forwards what the
app emits; the inbox thread long-polls the relay and delivers what arrives. Each has its
own HTTP clients.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import threading
import time
from pathlib import Path

import httpx

from fedsim.agent.app_client import AppClient, AppRequestError, AppUnreachable
from fedsim.agent.app_dialer import AppDialer
from fedsim.agent.exchange import Exchange
from fedsim.agent.launch import AgentLaunch
from fedsim.agent.protocol import AppStatus, parse_status, setup_body
from fedsim.logs import configure_agent_stdout, counted, get_logger
from fedsim.relay.client import RelayClient

log = get_logger("agent")


IDLE_POLL_MAX = 0.5
"""The slowest the agent polls an app that shows no change (it starts at ``poll_interval``
after each change and backs off by ``IDLE_BACKOFF``): a hundred idle sites cost next to
nothing, and an app's error is still seen well within 2 s."""
IDLE_BACKOFF = 1.5
APP_TIMEOUT = 30.0
"""How long one request to the app may take before the agent gives up on it."""
API_WAIT_POLL = 0.02
"""How often the agent asks an app that does not answer yet: a forked app answers about
0.1 s after it starts, and the site holds a start-up slot until then."""
INBOX_WAIT = 10.0
"""How long one long poll of the relay waits for a message: a message is handed over as it
arrives whatever this is, so it only sets how often an idle site asks (a hundred sites asking
every second cost a good part of a core)."""


class AgentError(RuntimeError):
    pass


class Agent:
    def __init__(self, config: AgentLaunch, token: str, dialer: AppDialer | None = None) -> None:
        """``dialer``: where the site makes the agent's connections to its app (a forked
        agent's); without one the agent is in the site's network and connects itself."""
        self.config = config
        config.relay_address()
        relay, ca = config.relay_url, config.relay_ca
        # one set of clients per thread: the main loop's, and the inbox thread's
        self._relay_out = RelayClient(relay, config.site, token, ca)
        self._relay_in = RelayClient(relay, config.site, token, ca)
        self._relay_inbox_out = RelayClient(relay, config.site, token, ca)
        self._app_out = AppClient(config.app_url, timeout=APP_TIMEOUT, dialer=dialer)
        self._exchange = Exchange(
            config.site,
            list(config.clients),
            config.coordinator,
            config.seed,
            app=AppClient(config.app_url, timeout=APP_TIMEOUT, dialer=dialer),
            relay=self._relay_inbox_out,
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set by the inbox when a message reached the app: its state is about to change."""
        self._inbox_error: BaseException | None = None

    # --- protocol --------------------------------------------------------------------------

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            try:
                self._app_out.get("/api/status")
                return
            except AppUnreachable:
                pass
            if time.monotonic() > deadline:
                raise AgentError(
                    f"the app did not answer /api/status within {self.config.startup_timeout:.0f} s"
                )
            time.sleep(API_WAIT_POLL)

    def _setup(self) -> None:
        body = setup_body(
            self.config.site,
            self.config.is_coordinator,
            list(self.config.clients),
            self.config.coordinator,
        )
        self._app_out.post("/api/setup", json_body=body)
        log.info(
            "set up as %s of %s",
            "coordinator" if self.config.is_coordinator else "participant",
            counted(len(self.config.clients), "site"),
        )

    def _status(self) -> AppStatus:
        return parse_status(self._app_out.get("/api/status"))

    def _forward(self, status: AppStatus) -> None:
        self._exchange.send(self._relay_out, status, self._app_out.get("/api/data"))

    def _inbox(self) -> None:
        """Messages from the relay to the app, each acknowledged once the app has it; one
        handed out again (its first answer was lost) is acknowledged, not delivered twice."""
        seen: set[int] = set()
        try:
            while not self._stop.is_set():
                message = self._relay_in.receive(wait=INBOX_WAIT)
                if message is None:
                    continue
                if message.id is not None and message.id in seen:
                    log.warning("message %d from %s came twice; delivered once", message.id,
                                message.sender)  # fmt: skip
                else:
                    self._exchange.receive(message)
                    self._wake.set()
                if message.id is not None:
                    seen.add(message.id)
                self._relay_in.ack(message)
        except BaseException as exc:  # handed to the main loop, which fails the site
            if not self._stop.is_set():
                self._inbox_error = exc

    def _drive(self) -> int:
        last_reported: dict[str, object] | None = None
        fast = self.config.poll_interval
        pause = fast
        while True:
            if self._inbox_error is not None:
                raise AgentError(f"delivering a message failed: {self._inbox_error}")
            status = self._status()
            self._exchange.template = status.template
            if status.display() != last_reported:
                last_reported = status.display()
                self._relay_out.report_status(last_reported)
                pause = fast
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
                pause = fast
                continue  # more items may be queued; each needs a fresh status first
            if self._wake.wait(pause):
                self._wake.clear()
                pause = fast
            else:
                pause = min(pause * IDLE_BACKOFF, max(IDLE_POLL_MAX, fast))

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
            self._wait_for_api()
            self._setup()
            inbox.start()
            code = self._drive()
            if code == 0:
                self._keep_aggregation_duties()
            return code
        except (AgentError, AppRequestError, httpx.HTTPError, ValueError, KeyError) as exc:
            log.error("%s", _described(exc))
            with contextlib.suppress(httpx.HTTPError):
                self._relay_out.report_status(
                    {"state": "error", "message": str(exc), "finished": True, "progress": None}
                )
            return 1
        finally:
            self._stop.set()
            self._report_memory()

    def _report_memory(self) -> None:
        """Peak resident memory of the agent itself (the placement measures the app's)."""
        kib = 1024  # ru_maxrss is in KiB on Linux
        usage = {"agent_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib}
        log.info("peak memory of the agent: %.1f MiB", usage["agent_peak_rss_bytes"] / 2**20)
        with contextlib.suppress(httpx.HTTPError):
            self._relay_out.report_memory(usage)


def _described(exc: BaseException) -> str:
    """The error, with the relay's request it broke when it was one ("connection reset"
    alone does not say which; the app's requests name themselves)."""
    if isinstance(exc, httpx.RequestError):
        with contextlib.suppress(RuntimeError):  # raised when the error has no request
            return f"{exc.request.method} {exc.request.url.path}: {exc}"
    return str(exc)


def main(argv: list[str]) -> int:
    """``python -m fedsim.agent LAUNCH.json TOKEN_FILE``: both are paths inside the site, put
    there by its placement; the token is kept out of argv and out of the description."""
    configure_agent_stdout()
    if len(argv) != 2:
        print("usage: python -m fedsim.agent LAUNCH.json TOKEN_FILE", file=sys.stderr)
        return 2
    try:
        launch = Path(argv[0]).read_text(encoding="utf-8")
        token = Path(argv[1]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        logging.getLogger("fedsim.agent").error("cannot read the launch description: %s", exc)
        return 2
    return run_agent(launch, token)


def run_agent(launch: str, token: str, dialer: AppDialer | None = None) -> int:
    """One site's agent from its launch description (JSON) and token: what ``main`` runs,
    and what a child of the agent fork-server (``sites/agent_forkserver_main.py``) runs,
    with its site's dialer."""
    try:
        config = AgentLaunch.from_json(launch)
        config.relay_address()
    except (TypeError, ValueError) as exc:
        logging.getLogger("fedsim.agent").error("cannot read the launch description: %s", exc)
        return 2
    return Agent(config, token, dialer).run()
