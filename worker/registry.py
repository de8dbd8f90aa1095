"""The fleet's registry: which workers run and which API credentials they use, in two small
sorted sets (`layout.WORKERS`, `layout.CREDENTIALS`), so that the dashboard reads them instead
of walking the keyspace.

A worker adds its health record's key at startup, scored by its start, and removes it as it
stops (arq's on_shutdown, after SIGTERM). A killed worker cannot: its member is pruned, by the
dashboard or by the next worker to start, once its record is gone and it started more than
the health-check interval + 1 s ago (a new worker writes its first record right after
startup). A running worker adds itself again every interval, so that one pruned while its
record was missing (a busy worker that missed a record) comes back. A credential is pruned
once it has no limiter state left and no worker has named it for that long.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from paylinks.jobs import layout
from paylinks.jobs.logs import get_logger

# How long a stopping worker tries to take itself off the registry.
UNREGISTER_TIMEOUT = 2.0


async def now_ms(redis: Redis) -> int:
    """Redis' clock, the one every host's worker and the dashboard share."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def stale(registered_ms: float, now: int, interval_s: float) -> bool:
    """Registered longer ago than a health record lives (interval + 1 s)."""
    return now - registered_ms > (interval_s + 1) * 1000


async def forget(redis: Redis, workers: list[str], credentials: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        if workers:
            pipe.zrem(layout.WORKERS, *workers)
        if credentials:
            pipe.zrem(layout.CREDENTIALS, *credentials)
        await pipe.execute()


async def prune(redis: Redis, interval_s: float, now: int) -> None:
    """Forget the workers whose record is gone, and the credentials with no limiter state,
    registered longer ago than a record lives."""
    horizon = now - int((interval_s + 1) * 1000) - 1
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(layout.WORKERS, "-inf", horizon)
        pipe.zrangebyscore(layout.CREDENTIALS, "-inf", horizon)
        workers, credentials = await pipe.execute()
    if not workers and not credentials:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for key in workers:
            pipe.exists(key)
        for credential in credentials:
            pipe.exists(*layout.limiter_keys(credential))
        found = await pipe.execute()
    await forget(
        redis,
        [key for key, n in zip(workers, found, strict=False) if not n],
        [c for c, n in zip(credentials, found[len(workers) :], strict=True) if not n],
    )


class Registration:
    """One worker's entry in the registry, from its startup to its shutdown."""

    def __init__(self, redis: Redis, health_key: str, credential: str, interval_s: float) -> None:
        self.redis = redis
        self.health_key = health_key
        self.credential = credential
        self.interval_s = interval_s
        self.started_ms = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.started_ms = now = await now_ms(self.redis)
        await prune(self.redis, self.interval_s, now)
        await self._add(now)
        self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            # Bounded: a stopping worker must not ride out a Redis outage to say goodbye.
            async with asyncio.timeout(UNREGISTER_TIMEOUT):
                await self.redis.zrem(layout.WORKERS, self.health_key)
        except (RedisError, TimeoutError) as e:  # pruned later, once its record is gone
            get_logger().warning("worker.unregister_failed", reason=type(e).__name__)

    async def _add(self, now: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(layout.WORKERS, {self.health_key: self.started_ms})
            pipe.zadd(layout.CREDENTIALS, {self.credential: now})
            await pipe.execute()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._add(await now_ms(self.redis))
            except RedisError as e:
                get_logger().warning("worker.register_failed", reason=type(e).__name__)
