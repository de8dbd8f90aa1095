"""Bearer tokens for the Conomy API: a static one, or one fetched and shared by the whole fleet."""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import aiohttp
import orjson
from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.logs import get_logger, redact
from paylinks.worker import metrics
from paylinks.worker.config import ConomyConfig

# A token is renewed a tenth of its lifetime before it expires, and never less than this many
# seconds before (half its lifetime, when shorter), so that no call goes out on a dying token.
RENEW_AHEAD = 5.0


class AuthError(Exception):
    """The token endpoint refused or failed; `status` is its HTTP status, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def rejected(self) -> bool:
        """Whether the endpoint refused the credentials themselves."""
        return self.status in (401, 403)


def renew_after(lifetime: float) -> float:
    """Seconds a token that lives `lifetime` seconds is used before it is renewed."""
    ahead = max(lifetime / 10, min(RENEW_AHEAD, lifetime / 2))
    return max(lifetime - ahead, 0.1)


class AccessTokens(Protocol):
    async def get(self) -> str: ...

    async def renew(self, rejected: str) -> str | None:
        """A fresh token after `rejected` drew a 401, or None when there is no other."""


class StaticToken:
    def __init__(self, token: str) -> None:
        self.token = token

    async def get(self) -> str:
        return self.token

    async def renew(self, rejected: str) -> str | None:
        return None


def credential_id(config: ConomyConfig) -> str:
    """A short, non-secret name for the API credential, to key shared state by."""
    material = f"{config.base_url}|{config.api_key.get_secret_value()}|{config.client_id or ''}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


class TokenEndpoint:
    """Tokens from `POST {base}/auth`, cached in Redis so the fleet asks once per token.

    A token is renewed before it expires (`renew_after`); a lock in Redis stops a fleet that
    finds it expired from asking for many tokens at once.
    """

    def __init__(self, config: ConomyConfig, redis: Redis, http: aiohttp.ClientSession) -> None:
        assert config.client_id is not None
        assert config.client_secret is not None
        self.url = config.token_url
        self.api_key = config.api_key
        self.client_id = config.client_id
        self.client_secret = config.client_secret
        self.redis = redis
        self.http = http
        credential = credential_id(config)
        self.key = layout.access_token_key(credential)
        self.lock_key = layout.access_token_lock_key(credential)
        self._token: str | None = None
        self._expires = 0.0

    async def get(self) -> str:
        if self._token and time.monotonic() < self._expires:
            return self._token
        if not await self._load():
            async with self.redis.lock(self.lock_key, timeout=30, blocking_timeout=30):
                if not await self._load():
                    await self._fetch()
        assert self._token
        return self._token

    async def renew(self, rejected: str) -> str | None:
        # Only the first worker to see the token rejected drops it; the others pick up its
        # replacement instead of each fetching their own.
        self._token = None
        async with self.redis.lock(self.lock_key, timeout=30, blocking_timeout=30):
            if await self._load() and self._token != rejected:
                return self._token
            await self._fetch()
        return self._token

    async def _load(self) -> bool:
        cached = await self.redis.get(self.key)
        ttl_ms = await self.redis.pttl(self.key)
        if not cached or ttl_ms <= 0:
            return False
        self._token = cached.decode() if isinstance(cached, bytes) else str(cached)
        redact(self._token)
        self._expires = time.monotonic() + ttl_ms / 1000
        return True

    async def _fetch(self) -> None:
        try:
            token, lifetime = await self._ask()
        except AuthError:
            metrics.TOKEN_RENEWALS.labels("failed").inc()
            raise
        metrics.TOKEN_RENEWALS.labels("renewed").inc()
        keep_ms = int(renew_after(lifetime) * 1000)
        redact(token)
        await self.redis.set(self.key, token, px=keep_ms)
        self._token, self._expires = token, time.monotonic() + keep_ms / 1000
        get_logger().info("auth.token_renewed", expires_in=lifetime)

    async def _ask(self) -> tuple[str, float]:
        """A new token from the endpoint, and its lifetime in seconds."""
        credentials = {
            "clientId": self.client_id,
            "clientSecret": self.client_secret.get_secret_value(),
        }
        headers = {"x-api-key": self.api_key.get_secret_value()}
        try:
            async with self.http.post(self.url, json=credentials, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise AuthError(f"token endpoint answered {response.status}", response.status)
        except aiohttp.ClientError as e:
            raise AuthError(f"token endpoint unreachable: {type(e).__name__}") from e
        try:
            answer = orjson.loads(body)
            return str(answer["accessToken"]), float(answer.get("expiresIn", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise AuthError("token endpoint answered without an accessToken") from e


class CredentialsRejectedError(Exception):
    """The token endpoint refused the configured credentials: no job can succeed."""


def rejected_credentials(config: ConomyConfig, error: AuthError) -> str:
    """The configuration error a refusal from the token endpoint means, naming the settings."""
    settings = "CONOMY_CLIENT_ID/CONOMY_CLIENT_SECRET"
    if error.status == 403:
        settings = f"CONOMY_API_KEY or {settings}"
    return f"{settings} rejected by {config.token_url} ({error.status})"


def access_tokens(config: ConomyConfig, redis: Redis, http: aiohttp.ClientSession) -> AccessTokens:
    if config.access_token is not None:
        return StaticToken(config.access_token.get_secret_value())
    return TokenEndpoint(config, redis, http)
