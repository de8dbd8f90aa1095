"""Acknowledging an enqueue only once enough replicas hold it (WAIT), so that a failover to
one of them keeps it."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from paylinks.jobs import layout
from paylinks.jobs.batches import now_ms
from paylinks.jobs.config import RedisConfig


class NotReplicatedError(RedisError):
    """Fewer replicas than PAYLINKS_REDIS_MIN_REPLICAS confirmed the writes in time; they may
    still be on the primary, but nothing was acknowledged."""


async def replicated(redis: Redis, config: RedisConfig) -> None:
    """Return once PAYLINKS_REDIS_MIN_REPLICAS replicas hold every write this process made
    so far; raise NotReplicatedError when they do not within PAYLINKS_REDIS_REPLICAS_TIMEOUT."""
    wanted = config.redis_min_replicas
    if not wanted:
        return
    timeout_ms = int(config.redis_replicas_timeout * 1000)
    # WAIT counts from the last write of its own connection, and a pool spreads a producer's
    # writes over several: one more write on WAIT's connection, after all of them, stands for
    # them all (replicas apply writes in the primary's order).
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(layout.REPLICATED, now_ms())
        pipe.wait(wanted, timeout_ms)
        _, confirmed = await pipe.execute()
    if confirmed < wanted:
        raise NotReplicatedError(
            f"{confirmed} of {wanted} replicas (PAYLINKS_REDIS_MIN_REPLICAS) confirmed the "
            f"writes within {config.redis_replicas_timeout:g} s; nothing is acknowledged: "
            "enqueue the same input again once they are back (what is already in adds nothing)"
        )
