"""Serve the relay from a thread of the orchestrator: on a Unix socket (local sites, whose
sandboxes get the socket bound in) and/or on TCP with TLS (remote sites), both listeners one
app and one state, on one event loop, so a message sent over TCP reaches a site that reads
over the Unix socket. Each listener has the relay's limits (concurrency, header size, the
head deadline); the concurrency limit counts per listener.

uvicorn's own records (a malformed request, the concurrency limit) are passed on to the
relay's logger as single lines, repeats within a few seconds dropped: a flood of bad
connections must not become a flood of console lines, nor reach Python's last-resort
handler that prints straight to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

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


class _RelayLoop(asyncio.SelectorEventLoop):
    """An event loop whose TLS listeners give up on a handshake after ``handshake_timeout``.

    uvicorn does not pass ``ssl_handshake_timeout``, so asyncio's default (60 s) would apply:
    a client that connects and never completes the handshake is not yet a connection to
    uvicorn (no slot of the concurrency limit, no head deadline), and could hold sockets
    open that long. Here the handshake gets the same time as a request head."""

    handshake_timeout: float = 10.0

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:  # type: ignore[override]
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


@dataclass(frozen=True)
class TlsListen:
    """Where the relay listens for TLS over TCP; port 0 picks a free port (``RelayServer.port``
    then tells which). ``cert_file``/``key_file``: from ``fedsim.relay.tls``."""

    host: str
    port: int
    cert_file: Path
    key_file: Path


class RelayServer:
    def __init__(
        self, state: RelayState, socket_path: Path | None = None, tls: TlsListen | None = None
    ) -> None:
        if socket_path is None and tls is None:
            raise ValueError("the relay needs somewhere to listen: a Unix socket, TLS, or both")
        self.state = state
        self.socket_path = socket_path
        self.tls = tls
        self._tcp_socket: socket.socket | None = None
        self._port: int | None = None
        self._servers: list[tuple[uvicorn.Server, list[socket.socket] | None]] = []
        app = create_app(state)
        if socket_path is not None:
            self._servers.append((uvicorn.Server(self._config(app, uds=str(socket_path))), None))
        if tls is not None:
            config = self._config(app, certificate=(str(tls.cert_file), str(tls.key_file)))
            config.load()
            assert config.ssl is not None
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3  # both ends are ours
            family = socket.AF_INET6 if ":" in tls.host else socket.AF_INET
            self._tcp_socket = socket.create_server((tls.host, tls.port), family=family)
            self._port = self._tcp_socket.getsockname()[1]
            self._servers.append((uvicorn.Server(config), [self._tcp_socket]))
        self._thread = threading.Thread(target=self._serve, name="relay", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_handler = _ToRelayLog()
        self._propagated: dict[str, bool] = {}

    def _config(
        self, app: Starlette, uds: str | None = None, certificate: tuple[str, str] | None = None
    ) -> uvicorn.Config:
        """One listener's settings: the relay's limits apply to every listener alike."""
        limits = self.state.limits
        cert_file, key_file = certificate or (None, None)
        return uvicorn.Config(
            app,
            uds=uds,
            ssl_certfile=cert_file,
            ssl_keyfile=key_file,
            http=guarded_h11(limits.head_timeout),
            ws="none",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            limit_concurrency=limits.connections(len(self.state.routing.sites)),
            timeout_keep_alive=limits.keep_alive_timeout,
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )

    def _serve(self) -> None:
        """All listeners on one loop: the state's waiting (long polls) is that loop's."""

        async def serve_all() -> None:
            await asyncio.gather(*(server.serve(sockets) for server, sockets in self._servers))

        def new_loop() -> asyncio.AbstractEventLoop:
            loop = _RelayLoop()
            loop.handshake_timeout = self.state.limits.head_timeout
            return loop

        with asyncio.Runner(loop_factory=new_loop) as runner:
            self._loop = runner.get_loop()
            runner.run(serve_all())

    @property
    def port(self) -> int | None:
        """The TLS listener's bound port (the one picked when asked for port 0)."""
        return self._port

    @property
    def url(self) -> str | None:
        """``https://HOST:PORT`` of the TLS listener, for an agent's launch description."""
        if self.tls is None:
            return None
        host = f"[{self.tls.host}]" if ":" in self.tls.host else self.tls.host
        return f"https://{host}:{self.port}"

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
        while not all(server.started for server, _ in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                where = " and ".join(str(w) for w in (self.socket_path, self.url) if w)
                self.stop()
                raise RuntimeError(f"relay did not start on {where}")
            time.sleep(0.01)

    def stop(self) -> None:
        self.state.closing.set()  # requests held by an injected hang are let go
        if self._loop is not None:  # long polls answer now, within the graceful shutdown
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self.state.stopping.set)
        for server, _ in self._servers:
            server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._tcp_socket is not None:
            self._tcp_socket.close()
        self._capture_server_logs(False)

    def __enter__(self) -> RelayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
