"""The fleet at a glance: the workers alive, the queue, and the rate limit with its pauses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import AdaptiveField
from paylinks.jobs.queuestate import health_counts
from paylinks.worker import registry
from paylinks.worker.config import WorkerConfig


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
    """Reads the fleet's state: the workers and credentials from the registry
    (`worker/registry.py`), two small sorted sets, never a walk of the keyspace; prunes the
    registry of killed workers and forgotten credentials as it goes."""

    def __init__(self, redis: Redis, config: WorkerConfig, health_interval_s: float) -> None:
        self.redis = redis
        self.config = config
        self.health_interval_s = health_interval_s

    async def read(self) -> Fleet:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zcard(layout.QUEUE)
            pipe.zrange(layout.WORKERS, 0, -1, withscores=True)
            pipe.zrange(layout.CREDENTIALS, 0, -1, withscores=True)
            (seconds, micros), queued, registered, named = await pipe.execute()
        now_us = int(seconds) * 1_000_000 + int(micros)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(layout.QUEUE, "-inf", now_us // 1000)
            for key, _ in registered:
                pipe.get(key)
                pipe.pttl(key)
            for credential, _ in named:
                keys = layout.limiter_keys(credential)
                pipe.exists(*keys)
                pipe.get(keys.pause)
                pipe.hget(keys.adaptive, AdaptiveField.RATE)
                pipe.zcount(keys.leases, now_us, "+inf")
                pipe.zcount(keys.slots, now_us - 1_000_000, now_us)
            due, *found = await pipe.execute()
        split = 2 * len(registered)
        workers, gone = self._workers(registered, found[:split], now_us // 1000)
        credentials, unused = self._credentials(named, found[split:], now_us)
        if gone or unused:
            await registry.forget(self.redis, gone, unused)
        return Fleet(
            workers=workers,
            queued=queued,
            due=due,
            rate_limit=self.config.rate_limit,
            rate_burst=self.config.rate_burst,
            max_in_flight=self.config.max_in_flight,
            credentials=credentials,
        )

    def _workers(
        self, registered: list[tuple[str, float]], found: list[Any], now_ms: int
    ) -> tuple[list[Worker], list[str]]:
        """Every registered worker whose health record has not expired, by host and pid; and
        the members to forget: records gone, of workers started longer ago than one lives."""
        workers, gone = [], []
        for (key, started_ms), health, ttl_ms in zip(
            registered, found[::2], found[1::2], strict=True
        ):
            worker = layout.worker_of_health_key(key)
            if worker is None or health is None:
                if worker is None or registry.stale(started_ms, now_ms, self.health_interval_s):
                    gone.append(key)
                continue
            # arq sets the record to live interval + 1 s: what has gone of that is its age.
            age = round(max(0.0, self.health_interval_s + 1 - ttl_ms / 1000), 1)
            counts = health_counts(health)
            workers.append(Worker(*worker, age if ttl_ms > 0 else None, counts))
        return sorted(workers, key=lambda w: (w.host, w.pid)), gone

    def _credentials(
        self, named: list[tuple[str, float]], found: list[Any], now_us: int
    ) -> tuple[list[Credential], list[str]]:
        """Each credential with limiter state in Redis; and those with none that no worker
        has named for longer than a health record lives."""
        credentials, unused = [], []
        for i, (name, named_ms) in enumerate(named):
            exists, paused_until, lowered, leases, calls = found[5 * i : 5 * i + 5]
            if not exists:
                if registry.stale(named_ms, now_us // 1000, self.health_interval_s):
                    unused.append(name)
                continue
            credentials.append(
                Credential(
                    name=name,
                    paused_for_s=max(0.0, (int(paused_until or 0) - now_us) / 1e6),
                    lowered_rate=float(lowered) if lowered else None,
                    leases=leases,
                    calls_last_second=calls,
                )
            )
        return sorted(credentials, key=lambda c: c.name), unused
