"""The Conomy API client: one pooled aiohttp session per process, the reference's headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from paylinks import __version__
from paylinks.worker import metrics
from paylinks.worker.auth import AccessTokens
from paylinks.worker.config import ConomyConfig, WorkerConfig


@dataclass(frozen=True)
class ApiError:
    """What a failed answer says, in either of the reference's shapes: the documented
    `{status, code, type, detail, traceId}` or the older `{statusCode, error, message}`."""

    message: str
    code: str | None = None
    type: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: bytes
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self, limit: int = 500) -> ApiError:
        """The API's own words about a failure, trimmed, with the code and type the provider
        asks clients to branch on and the traceId its support asks for."""
        try:
            answer = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            text = self.body[:limit].decode(errors="replace") or f"HTTP {self.status}"
            return ApiError(text)
        if not isinstance(answer, dict):
            return ApiError(orjson.dumps(answer).decode()[:limit])
        message = _text(answer.get("detail")) or _text(answer.get("message"))
        # In the older shape `error` is the status's name ("Conflict"): a message of last resort.
        message = message or _text(answer.get("error")) or orjson.dumps(answer).decode()
        return ApiError(
            message[:limit],
            code=_text(answer.get("code")),
            type=_text(answer.get("type")),
            trace_id=_text(answer.get("traceId")),
        )


def _text(value: object) -> str | None:
    """A field of an error body as text: codes come as "13" in the reference, 13 elsewhere."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def open_http(config: WorkerConfig) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=config.http_timeout, connect=config.connect_timeout)
    connector = aiohttp.TCPConnector(limit=config.concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)


class ConomyClient:
    def __init__(
        self, config: ConomyConfig, http: aiohttp.ClientSession, tokens: AccessTokens
    ) -> None:
        self.url = config.checkout_sessions_url
        # Where a failed connection was headed, for its reason (no path, no credentials).
        parts = urlsplit(self.url)
        self.address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.idempotency_header = config.idempotency_header
        self.http = http
        self.tokens = tokens
        self.headers = {
            "x-api-key": config.api_key.get_secret_value(),
            "conomyhq-api-version": config.api_version,
            "User-Agent": f"paylinks/{__version__}",
            "Content-Type": "application/json",
        }

    async def create_checkout_session(self, body: bytes, idempotency_key: str) -> ApiAnswer:
        """POST one checkout request; a rejected token is renewed and the call sent once more.

        Connection errors and timeouts are raised (aiohttp.ClientError, TimeoutError): the
        caller cannot know whether the session was created.
        """
        return await self._authorised(
            "POST", data=body, headers={self.idempotency_header: idempotency_key}
        )

    async def list_checkout_sessions(self, query: dict[str, str]) -> ApiAnswer:
        """GET one page of sessions (the reference's filters, `limit` and `offset`)."""
        return await self._authorised("GET", params=query)

    async def _authorised(self, method: str, **request: Any) -> ApiAnswer:
        token = await self.tokens.get()
        answer = await self._send(method, token, **request)
        if answer.status == 401:
            renewed = await self.tokens.renew(token)
            if renewed is not None:
                answer = await self._send(method, renewed, **request)
        return answer

    async def _send(
        self, method: str, token: str, headers: dict[str, str] | None = None, **request: Any
    ) -> ApiAnswer:
        sent = {**self.headers, **(headers or {}), "Authorization": f"Bearer {token}"}
        with metrics.api_call("create" if method == "POST" else "list") as call:
            async with self.http.request(method, self.url, headers=sent, **request) as response:
                call.status = response.status
                return ApiAnswer(
                    response.status, await response.read(), response.headers.get("Retry-After")
                )
