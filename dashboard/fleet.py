"""The fleet at a glance: arq's health record, the queue, and the rate limit with its pauses."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.worker.config import WorkerConfig

# arq's key: `<queue>:health-check`, set by a worker every `health_check_interval`.
HEALTH_KEY = f"{layout.QUEUE}:health-check"
RATELIMIT_PREFIX = f"{layout.PREFIX}:ratelimit:"
# Limiter keys that tell a credential is in use (see paylinks.worker.ratelimit.Limiter).
_CREDENTIAL_SUFFIXES = (":tat", ":pause", ":leases", ":adaptive")
# Finding credentials walks the whole keyspace (SCAN): done at most this often.
CREDENTIALS_TTL_S = 30.0


@dataclass(frozen=True)
class Credential:
    name: str
    paused_for_s: float
    lowered_rate: float | None
    leases: int
    calls_last_second: int


@dataclass(frozen=True)
class Fleet:
    health: str | None
    health_age_s: float | None
    queued: int
    due: int
    rate_limit: float
    rate_burst: int
    max_in_flight: int
    credentials: list[Credential]


class FleetReader:
    """Reads the fleet's state; remembers which credentials it found for a while."""

    def __init__(self, redis: Redis, config: WorkerConfig, health_interval_s: float) -> None:
        self.redis = redis
        self.config = config
        self.health_interval_s = health_interval_s
        self._credentials: list[str] = []
        self._found_at = float("-inf")

    async def read(self) -> Fleet:
        seconds, micros = await self.redis.time()
        now_us = seconds * 1_000_000 + micros
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(HEALTH_KEY)
            pipe.pttl(HEALTH_KEY)
            pipe.zcard(layout.QUEUE)
            pipe.zcount(layout.QUEUE, "-inf", now_us // 1000)
            health, ttl_ms, queued, due = await pipe.execute()
        # arq sets the key to live interval + 1 s: what has gone of that is its age.
        age = self.health_interval_s + 1 - ttl_ms / 1000 if health and ttl_ms > 0 else None
        return Fleet(
            health=health,
            health_age_s=round(age, 1) if age is not None else None,
            queued=queued,
            due=due,
            rate_limit=self.config.rate_limit,
            rate_burst=self.config.rate_burst,
            max_in_flight=self.config.max_in_flight,
            credentials=[await self._credential(c, now_us) for c in await self.credentials()],
        )

    async def credentials(self) -> list[str]:
        if time.monotonic() - self._found_at > CREDENTIALS_TTL_S:
            found = set()
            async for key in self.redis.scan_iter(match=f"{RATELIMIT_PREFIX}*", count=1000):
                for suffix in _CREDENTIAL_SUFFIXES:
                    if key.endswith(suffix):
                        found.add(key[len(RATELIMIT_PREFIX) : -len(suffix)])
            self._credentials, self._found_at = sorted(found), time.monotonic()
        return self._credentials

    async def _credential(self, name: str, now_us: int) -> Credential:
        prefix = f"{RATELIMIT_PREFIX}{name}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(f"{prefix}:pause")
            pipe.hget(f"{prefix}:adaptive", "rate")
            pipe.zcount(f"{prefix}:leases", now_us, "+inf")
            pipe.zcount(f"{prefix}:slots", now_us - 1_000_000, now_us)
            paused_until, lowered, leases, calls = await pipe.execute()
        return Credential(
            name=name,
            paused_for_s=max(0.0, (int(paused_until or 0) - now_us) / 1e6),
            lowered_rate=float(lowered) if lowered else None,
            leases=leases,
            calls_last_second=calls,
        )
