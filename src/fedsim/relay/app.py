"""The relay's HTTP interface (ASGI).

    POST /sites/{site}/messages?destination=&memo=&kind=   body: opaque payload
    GET  /sites/{site}/messages?wait=SECONDS         200 with one message, or 204
    PUT  /sites/{site}/status                        JSON state of the site's app
    PUT  /sites/{site}/memory                        JSON peak memory of the site's processes
    GET  /health

Every call but /health needs ``Authorization: Bearer <token>``; the token decides who the
caller is, and a site may only use its own ``{site}`` path. Payloads are never decoded.

A client's fault is answered with a 4xx and ``{"error": "..."}``, logged as one warning line
naming the caller, and, when an authenticated site made it, recorded in
``RelayState.violations``. It never raises into the server, so no traceback reaches the
console. Error answers close the connection: the body the client may still be sending is
not read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedsim.logs import get_logger
from fedsim.relay.body import ClientGone, read_body
from fedsim.relay.kinds import (
    APP_KIND,
    KIND_HEADER,
    MEMO_HEADER,
    MESSAGE_ID_HEADER,
    SENDER_HEADER,
)
from fedsim.relay.state import Message, RelayState
from fedsim.relay.validation import (
    MAX_WAIT,
    Refused,
    check_kind,
    check_memo,
    check_route,
    clean_memory,
    clean_status,
    parse_json_object,
    parse_wait,
    printable,
)

__all__ = ["KIND_HEADER", "MAX_WAIT", "MEMO_HEADER", "SENDER_HEADER", "create_app"]

VIOLATION_STATUSES = frozenset({400, 403, 413})
"""Refusals that say the caller's agent is broken or hostile (not a stall or a lost link)."""

log = get_logger("relay")

Handler = Callable[[Request, str], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})


def _identify(request: Request, state: RelayState) -> str:
    """The calling site by its token, or ``Refused`` (401)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    caller = state.site_for_token(token) if scheme.lower() == "bearer" and token else None
    if caller is None:
        raise Refused(401, "missing or wrong token")
    return caller


def _guarded(state: RelayState, what: str, handler: Handler) -> Callable[[Request], Awaitable]:
    """Authorise, run the handler, and turn any client fault into one answer and one line."""

    async def endpoint(request: Request) -> Response:
        caller: str | None = None
        try:
            caller = _identify(request, state)
            site = request.path_params["site"]
            if site != caller:
                forged = printable(site)
                raise Refused(403, f"site {caller} may only act as itself, not as {forged}")
            blocked = state.faults.blocked(caller) if state.faults is not None else None
            if blocked is not None:
                return await _faulty(state, blocked)
            return await handler(request, caller)
        except Refused as exc:
            who = caller or "an unauthenticated client"
            log.warning("refused %s from %s: %s", what, who, exc.message)
            if caller is not None and exc.status in VIOLATION_STATUSES:
                state.record_violation(caller, f"{what}: {exc.message}")
            return _error(exc.status, exc.message)
        except ClientGone:
            log.warning("%s disconnected while sending %s", caller, what)
            return Response(status_code=400)  # nobody reads it; the server drops it

    return endpoint


async def _faulty(state: RelayState, action: str) -> Response:
    """The answer to a site an injected fault holds: none until the relay stops (a hung
    site), or a refusal, as from a link that is down."""
    if action == "hang":
        while not state.closing.is_set():
            await asyncio.sleep(0.2)
    return _error(503, "the site's link is down (injected fault)")


async def _next(
    mailbox: asyncio.Queue[Message], stopping: asyncio.Event, wait: float
) -> Message | None:
    """The mailbox's next message within ``wait`` seconds; None if none came, or at once
    when the relay stops. A message that arrives as the wait is cancelled stays queued."""
    getter = asyncio.ensure_future(mailbox.get())
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((getter, stopped), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


def create_app(state: RelayState) -> Starlette:
    limits = state.limits

    async def send(request: Request, caller: str) -> Response:
        params = request.query_params
        kind = check_kind(params.get("kind") or APP_KIND)
        memo = check_memo(params.get("memo"))
        destination = params.get("destination") or None
        receivers = check_route(state.routing, caller, destination, kind)
        payload = await read_body(request, limits.max_message_bytes, limits.body_idle_timeout)
        sent = time.time()
        fault = state.faults.on_send(caller, memo) if state.faults is not None else None
        if fault == "drop":
            state.record_dropped(caller, destination, memo, len(payload), kind)
            return JSONResponse({"receivers": receivers}, status_code=202)
        if fault is not None:
            return await _faulty(state, fault)
        if state.network is not None:  # the sender waits while its link uploads
            arrived = state.network.upload(caller, len(payload), sent)
            await asyncio.sleep(max(0.0, arrived - time.time()))
        state.deliver(caller, destination, memo, payload, kind, sent=sent)
        log.debug("%s -> %s memo=%s %d bytes", caller, ",".join(receivers), memo, len(payload))
        return JSONResponse({"receivers": receivers}, status_code=202)

    async def receive(request: Request, caller: str) -> Response:
        wait = parse_wait(request.query_params.get("wait"))
        mailbox = state.mailbox(caller)
        for message in state.overdue(caller):  # its answer was lost: hand it out again
            log.warning("message %s to %s not acknowledged: handing it out again",
                        message.record, caller)  # fmt: skip
            mailbox.put_nowait(message)
        try:
            message = (
                mailbox.get_nowait() if wait == 0 else await _next(mailbox, state.stopping, wait)
            )
        except asyncio.QueueEmpty:
            message = None
        if message is None:
            return Response(status_code=204)
        state.hand_out(caller, message)
        headers = {SENDER_HEADER: message.sender, KIND_HEADER: message.kind}
        if message.record is not None:
            headers[MESSAGE_ID_HEADER] = str(message.record)
        if message.memo is not None:
            headers[MEMO_HEADER] = quote(message.memo, safe="")
        return Response(message.payload, media_type="application/octet-stream", headers=headers)

    async def acknowledge(request: Request, caller: str) -> Response:
        try:
            record = int(request.path_params["message"])
        except ValueError:
            raise Refused(400, "a message id is a number") from None
        state.acknowledge(caller, record)
        return Response(status_code=204)

    async def put_status(request: Request, caller: str) -> Response:
        body = await read_body(request, limits.max_report_bytes, limits.body_idle_timeout)
        state.set_report("status", caller, clean_status(parse_json_object(body, "status")))
        return Response(status_code=204)

    async def put_memory(request: Request, caller: str) -> Response:
        body = await read_body(request, limits.max_report_bytes, limits.body_idle_timeout)
        state.set_report("memory", caller, clean_memory(parse_json_object(body, "memory")))
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    site = "/sites/{site}"
    put_memory_report = _guarded(state, "a memory report", put_memory)
    return Starlette(
        routes=[
            Route(f"{site}/messages", _guarded(state, "a message", send), methods=["POST"]),
            Route(f"{site}/messages", _guarded(state, "a poll", receive), methods=["GET"]),
            Route(
                f"{site}/messages/{{message}}/ack",
                _guarded(state, "an acknowledgement", acknowledge),
                methods=["POST"],
            ),
            Route(f"{site}/status", _guarded(state, "a status", put_status), methods=["PUT"]),
            Route(f"{site}/memory", put_memory_report, methods=["PUT"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
