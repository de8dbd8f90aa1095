"""The Conomy API client: one pooled aiohttp session per process, the reference's headers."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import orjson

from paylinks import __version__
from paylinks.worker.auth import AccessTokens
from paylinks.worker.config import ConomyConfig, WorkerConfig


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: bytes
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_message(self, limit: int = 500) -> str:
        """The API's own words about a failure, trimmed, for the record and the dead letter."""
        try:
            answer = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body[:limit].decode(errors="replace") or f"HTTP {self.status}"
        if isinstance(answer, dict):
            error = answer.get("error") or answer.get("message") or answer
            if isinstance(error, dict):
                error = error.get("message") or error
            answer = error
        text = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
        return text[:limit]


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
        caller cannot know whether the session was created, only that it may ask again
        under the same idempotency key.
        """
        token = await self.tokens.get()
        answer = await self._post(body, idempotency_key, token)
        if answer.status == 401:
            renewed = await self.tokens.renew(token)
            if renewed is not None:
                answer = await self._post(body, idempotency_key, renewed)
        return answer

    async def _post(self, body: bytes, idempotency_key: str, token: str) -> ApiAnswer:
        headers = {
            **self.headers,
            "Authorization": f"Bearer {token}",
            self.idempotency_header: idempotency_key,
        }
        async with self.http.post(self.url, data=body, headers=headers) as response:
            return ApiAnswer(
                response.status, await response.read(), response.headers.get("Retry-After")
            )
