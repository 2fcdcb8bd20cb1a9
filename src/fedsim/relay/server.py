"""Serve the relay on a Unix socket from a thread of the orchestrator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from fedsim.relay.app import create_app
from fedsim.relay.state import RelayState


class RelayServer:
    def __init__(self, state: RelayState, socket_path: Path) -> None:
        self.state = state
        self.socket_path = socket_path
        config = uvicorn.Config(
            create_app(state),
            uds=str(socket_path),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="relay", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"relay did not start on {self.socket_path}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> RelayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
