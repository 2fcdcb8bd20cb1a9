"""One HTTP client per user, polite by construction, and the checks every answer goes through.

featurecloud.ai has no published contract, so nothing in an answer is trusted: ``expect``
checks the status and the fields a caller needs, and any gap is an ``ApiError`` naming the
call, the status and what was missing. The client names itself (``User-Agent: fedsim/V``),
keeps to ``Pacing.min_interval`` between its requests (one client is one user), and on 429
or 403 backs off (``Retry-After`` when given) a few times, then stops with ``Throttled``.
Request bodies and headers are never logged: they hold passwords and tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

import fedsim
from fedsim.featurecloud.errors import ApiError, Throttled
from fedsim.logs import get_logger

log = get_logger("fc")

USER_AGENT = f"fedsim/{fedsim.__version__}"
REFUSALS = (429, 403)


@dataclass(frozen=True)
class Pacing:
    """How hard one user may knock: the defaults keep to "a few requests per second per user"
    and give a refusing server minutes, not milliseconds; tests shorten them."""

    min_interval: float = 0.3
    """Seconds between two requests of the same client."""
    backoff: float = 5.0
    """First wait after a 429/403 without ``Retry-After``; doubled after each further one."""
    max_backoff: float = 120.0
    retries: int = 3
    """Tries after the first refusal before giving up."""
    timeout: float = 60.0
    """Seconds for one request (connect, send, receive)."""


class HttpClient:
    """Every request of one user to one server goes through ``request``."""

    def __init__(self, base_url: str, pacing: Pacing) -> None:
        self.base_url = base_url.rstrip("/")
        self.pacing = pacing
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT},
            timeout=pacing.timeout,
            follow_redirects=False,
        )
        self._last = float("-inf")

    def close(self) -> None:
        self._client.close()

    def _pace(self) -> None:
        wait = self._last + self.pacing.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()

    def _refusal_wait(self, response: httpx.Response, attempt: int) -> float:
        given = response.headers.get("Retry-After", "")
        wait = float(given) if given.isdigit() else self.pacing.backoff * 2**attempt
        return min(wait, self.pacing.max_backoff)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The answer of any status but 429/403 (those are backed off, then ``Throttled``);
        a connection that fails is an ``ApiError`` without a status."""
        call = f"{method} {path}"
        for attempt in range(self.pacing.retries + 1):
            self._pace()
            try:
                response = self._client.request(
                    method, path, params=params, json=json, content=content, headers=headers
                )
            except httpx.HTTPError as exc:
                raise ApiError(call, None, f"{self.base_url} did not answer ({exc})") from exc
            if response.status_code not in REFUSALS:
                return response
            if attempt == self.pacing.retries:
                break
            wait = self._refusal_wait(response, attempt)
            log.warning(
                "%s: status %d from %s; waiting %.1f s before trying again (%d of %d)",
                call,
                response.status_code,
                self.base_url,
                wait,
                attempt + 1,
                self.pacing.retries,
            )
            time.sleep(wait)
        raise Throttled(
            call,
            response.status_code,
            f"{self.base_url} still refused after {self.pacing.retries} back-offs; stopped "
            "rather than retry hard (wait, then run the command again)",
        )


def _problem_detail(response: httpx.Response) -> str:
    """The server's own short reason (Django REST's ``detail``), if it gave one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return f" ({str(detail)[:200]})" if detail else ""


def _checked_call(response: httpx.Response, statuses: Iterable[int]) -> str:
    """``METHOD /path`` of the response's request, once its status is one of ``statuses``."""
    call = f"{response.request.method} {response.request.url.path}"
    allowed = tuple(statuses)
    if response.status_code not in allowed:
        wanted = " or ".join(str(s) for s in allowed)
        raise ApiError(call, response.status_code, f"expected {wanted}{_problem_detail(response)}")
    return call


def _json(response: httpx.Response, call: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(call, response.status_code, "the answer is not JSON") from None


def expect(
    response: httpx.Response,
    statuses: Iterable[int] = (200, 201),
    fields: Iterable[str] = (),
) -> dict[str, Any]:
    """The answer's JSON object, checked: an expected status, and every field in ``fields``
    present. Anything else is an ``ApiError`` saying which call, what status, what was missing."""
    call = _checked_call(response, statuses)
    body = _json(response, call)
    if not isinstance(body, dict):
        raise ApiError(call, response.status_code, "expected a JSON object in the answer")
    return require(body, fields, call, response.status_code)


def expect_list(response: httpx.Response, fields: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The answer's JSON list of objects, each with ``fields``."""
    call = _checked_call(response, (200,))
    body = _json(response, call)
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise ApiError(call, response.status_code, "expected a JSON list of objects")
    needed = tuple(fields)
    return [require(item, needed, call, response.status_code) for item in body]


def require(body: dict[str, Any], fields: Iterable[str], call: str, status: int) -> dict[str, Any]:
    """``body`` if every one of ``fields`` is in it (and not null); else the clear error."""
    missing = [name for name in fields if body.get(name) is None]
    if missing:
        raise ApiError(call, status, f"missing in the answer: {', '.join(missing)}")
    return body


def expect_ok(response: httpx.Response, statuses: Iterable[int] = (200, 201, 204)) -> None:
    """A call whose answer we do not read, only its status."""
    _checked_call(response, statuses)
