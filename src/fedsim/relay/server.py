"""Serve the relay on a Unix socket from a thread of the orchestrator.

uvicorn's own records (a malformed request, the concurrency limit) are passed on to the
relay's logger as single lines, repeats within a few seconds dropped: a flood of bad
connections must not become a flood of console lines, nor reach Python's last-resort
handler that prints straight to stderr.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import uvicorn

from fedsim.logs import get_logger
from fedsim.relay.app import create_app
from fedsim.relay.connections import guarded_h11
from fedsim.relay.state import RelayState

UVICORN_LOGGERS = ("uvicorn.error",)
"""Not uvicorn.access: a handler there would switch on a line per request."""
REPEAT_WINDOW = 5.0

log = get_logger("relay")


class _ToRelayLog(logging.Handler):
    """Hands uvicorn's records to the relay's logger, once per message per ``REPEAT_WINDOW``;
    its start-up chatter goes to the log file only (DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._last: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().split("\n", 1)[0]
        now = time.monotonic()
        if now - self._last.get(text, -REPEAT_WINDOW) < REPEAT_WINDOW:
            return
        self._last = {k: t for k, t in self._last.items() if now - t < REPEAT_WINDOW}
        self._last[text] = now
        level = record.levelno if record.levelno >= logging.WARNING else logging.DEBUG
        log.log(level, "server: %s", text, exc_info=record.exc_info)


class RelayServer:
    def __init__(self, state: RelayState, socket_path: Path) -> None:
        self.state = state
        self.socket_path = socket_path
        limits = state.limits
        config = uvicorn.Config(
            create_app(state),
            uds=str(socket_path),
            http=guarded_h11(limits.head_timeout),
            ws="none",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            limit_concurrency=limits.connections(len(state.routing.sites)),
            timeout_keep_alive=limits.keep_alive_timeout,
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="relay", daemon=True)
        self._log_handler = _ToRelayLog()
        self._propagated: dict[str, bool] = {}

    def _capture_server_logs(self, on: bool) -> None:
        for name in UVICORN_LOGGERS:
            logger = logging.getLogger(name)
            if on:
                self._propagated[name] = logger.propagate
                logger.addHandler(self._log_handler)
                logger.propagate = False
            else:
                logger.removeHandler(self._log_handler)
                logger.propagate = self._propagated.pop(name, True)

    def start(self, timeout: float = 10.0) -> None:
        self._capture_server_logs(True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._capture_server_logs(False)
                raise RuntimeError(f"relay did not start on {self.socket_path}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._capture_server_logs(False)

    def __enter__(self) -> RelayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
