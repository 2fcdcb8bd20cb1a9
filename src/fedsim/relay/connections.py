"""The relay's HTTP/1.1 connections, with the one guard uvicorn lacks: a deadline on the
request head. uvicorn times out idle keep-alive connections, but a client that sends one
byte of a request line and then nothing (slowloris) holds its connection, and with it a
slot of the concurrency limit, for ever. Here it gets ``head_timeout`` seconds."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from fedsim.logs import get_logger

log = get_logger("relay")


def guarded_h11(head_timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` that closes a connection whose request head is late."""

    class HeadDeadlineH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self._head_timer = self.loop.call_later(head_timeout, self._head_late, self.cycle)

        def _cancel_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self, cycle_when_armed: Any) -> None:
            """No request began since the deadline was armed: drop the connection."""
            self._head_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is not cycle_when_armed or not idle or self.transport.is_closing():
                return
            if self.conn.trailing_data[0]:  # part of a head: slow or hostile, worth a line
                log.warning("closed a connection whose request head was not complete in time")
            self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

    return HeadDeadlineH11Protocol
