"""Reading a request body without trusting its sender: counted while it streams, with a limit
and an idle timeout, so a 500 MB upload or a stalled one costs the relay almost nothing."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from fedsim.relay.validation import Refused, check_content_length, too_large


class ClientGone(Exception):
    """The client went away before its body was complete: nothing to answer, nobody to blame."""


async def read_body(request: Request, limit: int, idle_timeout: float) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``limit`` bytes.

    A declared ``Content-Length`` is checked before a byte is read; a chunked body, or one
    whose declared length lies, is counted chunk by chunk and dropped when it passes the limit.
    """
    declared = check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                message = await request.receive()
        except TimeoutError:
            raise Refused(408, f"the body stalled for {idle_timeout:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(413, too_large(declared, limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
