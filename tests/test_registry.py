"""The fleet's registry (`worker/registry.py`) on a real Redis: what a worker's registration
adds, prunes and removes, and that a live worker pruned by mistake comes back."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.worker.registry import Registration, now_ms

DEADLINE_S = 60


async def test_a_worker_prunes_the_dead_at_startup_and_removes_itself_at_shutdown(
    redis: Redis,
) -> None:
    now = await now_ms(redis)
    dead, alive, starting = (layout.worker_health_key("h", pid) for pid in (1, 2, 3))
    await redis.set(alive, "j_complete=0")
    # Started long ago, with no record (killed) or with one; started just now, no record yet.
    await redis.zadd(layout.WORKERS, {dead: now - 60_000, alive: now - 60_000, starting: now})
    await redis.zadd(layout.CREDENTIALS, {"unused": now - 60_000, "paused": now - 60_000})
    await redis.set(layout.limiter_keys("paused").pause, 1)

    own = layout.worker_health_key("h", 4)
    registration = Registration(redis, own, "mine", interval_s=10)
    await registration.start()
    assert set(await redis.zrange(layout.WORKERS, 0, -1)) == {alive, starting, own}
    assert set(await redis.zrange(layout.CREDENTIALS, 0, -1)) == {"paused", "mine"}
    assert await redis.zscore(layout.WORKERS, own) == registration.started_ms

    await registration.stop()
    assert await redis.zscore(layout.WORKERS, own) is None
    # The credential stays: other workers may use it, and it is forgotten once unused.
    assert await redis.zscore(layout.CREDENTIALS, "mine") is not None


async def test_a_live_worker_pruned_by_mistake_registers_again(redis: Redis) -> None:
    """A busy worker can miss a health record, and be pruned as if killed: it comes back."""
    own = layout.worker_health_key("h", 5)
    registration = Registration(redis, own, "mine", interval_s=0.1)
    await registration.start()
    try:
        await redis.zrem(layout.WORKERS, own)
        deadline = time.monotonic() + DEADLINE_S
        while await redis.zscore(layout.WORKERS, own) != registration.started_ms:
            assert time.monotonic() < deadline, "the worker did not register again"
            await asyncio.sleep(0.05)
    finally:
        await registration.stop()
    assert await redis.zscore(layout.WORKERS, own) is None
