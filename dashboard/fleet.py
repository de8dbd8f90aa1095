"""The fleet at a glance: the workers alive, the queue, and the rate limit with its pauses."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import AdaptiveField
from paylinks.worker.config import WorkerConfig

# Finding workers and credentials walks the whole keyspace (SCAN): credentials, which come
# and go rarely, are looked for at most this often; workers at every read of the page.
CREDENTIALS_TTL_S = 30.0
# Keys a SCAN call looks at. Redis spends about 0.7 µs a key whatever the count; at 1,000 a
# call holds it about 0.5 ms (10,000: 9 ms, for a page about half as slow over 140,000 keys).
SCAN_COUNT = 1_000
# arq's health record: "<date> j_complete=3 j_failed=0 j_retried=1 j_ongoing=2 queued=0".
_COUNT = re.compile(r"\b(j_complete|j_failed|j_retried|j_ongoing|queued)=(\d+)")


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    # Seconds since it last wrote its record, if the dashboard's interval is the workers'.
    age_s: float | None
    # arq's counts since the worker started: j_complete, j_failed, j_retried, j_ongoing,
    # and the queue's length when it wrote them.
    counts: dict[str, int]


@dataclass(frozen=True)
class Credential:
    name: str
    paused_for_s: float
    lowered_rate: float | None
    leases: int
    calls_last_second: int


@dataclass(frozen=True)
class Fleet:
    workers: list[Worker]
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
            pipe.zcard(layout.QUEUE)
            pipe.zcount(layout.QUEUE, "-inf", now_us // 1000)
            queued, due = await pipe.execute()
        return Fleet(
            workers=await self.workers(),
            queued=queued,
            due=due,
            rate_limit=self.config.rate_limit,
            rate_burst=self.config.rate_burst,
            max_in_flight=self.config.max_in_flight,
            credentials=[await self._credential(c, now_us) for c in await self.credentials()],
        )

    async def workers(self) -> list[Worker]:
        """Every worker whose health record has not expired, by host and pid."""
        pattern = layout.WORKER_HEALTH_PATTERN
        # SCAN may return a key twice.
        keys = sorted({key async for key in self.redis.scan_iter(pattern, SCAN_COUNT)})
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            found = await pipe.execute()
        workers = []
        for key, health, ttl_ms in zip(keys, found[::2], found[1::2], strict=True):
            worker = layout.worker_of_health_key(key)
            if worker is None or health is None:  # not a worker's, or gone since the SCAN
                continue
            # arq sets the record to live interval + 1 s: what has gone of that is its age.
            age = round(max(0.0, self.health_interval_s + 1 - ttl_ms / 1000), 1)
            counts = {name: int(n) for name, n in _COUNT.findall(health)}
            workers.append(Worker(*worker, age if ttl_ms > 0 else None, counts))
        return sorted(workers, key=lambda w: (w.host, w.pid))

    async def credentials(self) -> list[str]:
        if time.monotonic() - self._found_at > CREDENTIALS_TTL_S:
            found = set()
            async for key in self.redis.scan_iter(layout.LIMITER_PATTERN, SCAN_COUNT):
                credential = layout.limiter_credential(key)
                if credential is not None:
                    found.add(credential)
            self._credentials, self._found_at = sorted(found), time.monotonic()
        return self._credentials

    async def _credential(self, name: str, now_us: int) -> Credential:
        keys = layout.limiter_keys(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.pause)
            pipe.hget(keys.adaptive, AdaptiveField.RATE)
            pipe.zcount(keys.leases, now_us, "+inf")
            pipe.zcount(keys.slots, now_us - 1_000_000, now_us)
            paused_until, lowered, leases, calls = await pipe.execute()
        return Credential(
            name=name,
            paused_for_s=max(0.0, (int(paused_until or 0) - now_us) / 1e6),
            lowered_rate=float(lowered) if lowered else None,
            leases=leases,
            calls_last_second=calls,
        )
