"""The relay's HTTP interface (ASGI).

    POST /sites/{site}/messages?destination=&memo=&kind=   body: opaque payload
    GET  /sites/{site}/messages?wait=SECONDS         200 with one message, or 204
    PUT  /sites/{site}/status                        JSON state of the site's app
    PUT  /sites/{site}/memory                        JSON peak memory of the site's processes
    GET  /health

Every call but /health needs ``Authorization: Bearer <token>``; the token decides who the
caller is, and a site may only use its own ``{site}`` path. Payloads are never decoded.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedsim.logs import get_logger
from fedsim.relay.routing import UnknownDestination
from fedsim.relay.state import APP_KIND, RelayState

SENDER_HEADER = "X-Fedsim-Sender"
KIND_HEADER = "X-Fedsim-Kind"
MEMO_HEADER = "X-Fedsim-Memo"
MAX_WAIT = 30.0

log = get_logger("relay")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _authorise(request: Request, state: RelayState) -> str | Response:
    """Return the calling site, or the response that refuses it."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    caller = state.site_for_token(token) if scheme.lower() == "bearer" and token else None
    if caller is None:
        log.warning("refused a request to %s: missing or wrong token", request.url.path)
        return _error(401, "missing or wrong token")
    site = request.path_params["site"]
    if site != caller:
        log.warning("refused %s acting as %s", caller, site)
        return _error(403, f"site {caller} may only act as itself, not as {site}")
    return caller


def create_app(state: RelayState) -> Starlette:
    async def send(request: Request) -> Response:
        caller = _authorise(request, state)
        if isinstance(caller, Response):
            return caller
        payload = await request.body()
        destination = request.query_params.get("destination") or None
        memo = request.query_params.get("memo")
        kind = request.query_params.get("kind") or APP_KIND
        try:
            receivers = state.deliver(caller, destination, memo, payload, kind)
        except UnknownDestination as exc:
            return _error(400, str(exc))
        log.debug("%s -> %s memo=%s %d bytes", caller, ",".join(receivers), memo, len(payload))
        return JSONResponse({"receivers": receivers}, status_code=202)

    async def receive(request: Request) -> Response:
        caller = _authorise(request, state)
        if isinstance(caller, Response):
            return caller
        try:
            wait = min(max(float(request.query_params.get("wait", "0")), 0.0), MAX_WAIT)
        except ValueError:
            return _error(400, "wait must be a number of seconds")
        mailbox = state.mailbox(caller)
        try:
            message = (
                mailbox.get_nowait()
                if wait == 0
                else await asyncio.wait_for(mailbox.get(), timeout=wait)
            )
        except (asyncio.QueueEmpty, TimeoutError):
            return Response(status_code=204)
        headers = {SENDER_HEADER: message.sender, KIND_HEADER: message.kind}
        if message.memo is not None:
            headers[MEMO_HEADER] = quote(message.memo, safe="")
        return Response(message.payload, media_type="application/octet-stream", headers=headers)

    def put_report(kind: str):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Response:
            caller = _authorise(request, state)
            if isinstance(caller, Response):
                return caller
            try:
                report = json.loads(await request.body())
            except ValueError:
                return _error(400, f"{kind} must be JSON")
            if not isinstance(report, dict):
                return _error(400, f"{kind} must be a JSON object")
            state.set_report(kind, caller, report)
            return Response(status_code=204)

        return handler

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/sites/{site}/messages", send, methods=["POST"]),
            Route("/sites/{site}/messages", receive, methods=["GET"]),
            Route("/sites/{site}/status", put_report("status"), methods=["PUT"]),
            Route("/sites/{site}/memory", put_report("memory"), methods=["PUT"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
