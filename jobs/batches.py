"""Batches: sealing one, its counts by state, and its completion signal."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from paylinks.jobs import layout, queue
from paylinks.jobs.layout import BatchField, State
from paylinks.jobs.logs import get_logger
from paylinks.jobs.scripts import lua

COMPLETED_STREAM_LENGTH = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Batches:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._complete = redis.register_script(lua("paylinks.jobs", "complete"))

    async def unseal(self, batch: str) -> None:
        """Hold the batch open while requests are added to it again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(layout.batch_key(batch), BatchField.SEALED, "0")
            pipe.hdel(layout.batch_key(batch), BatchField.COMPLETED_AT)
            await pipe.execute()

    async def seal(self, batch: str) -> bool:
        """Every request of the batch is enqueued: from now on it can complete.

        A batch that no request was ever enqueued into does not exist, and is not created.
        """
        if not await self.redis.exists(layout.batch_key(batch)):
            return False
        await self.redis.hset(layout.batch_key(batch), BatchField.SEALED, "1")  # type: ignore[misc]
        return await self.complete(batch)

    async def complete(self, batch: str) -> bool:
        """Signal the batch's completion if all its requests ended; True for the one caller
        that did, however many workers finish together."""
        now = now_ms()
        webhook_job = f"{queue.WEBHOOK_FUNCTION}:{batch}:{now}"
        completed = await self._complete(
            keys=[
                layout.batch_key(batch),
                layout.COMPLETED_BATCHES,
                layout.arq_job_key(webhook_job),
                layout.QUEUE,
            ],
            args=[
                batch,
                now,
                webhook_job,
                queue.job_payload(batch, now, queue.WEBHOOK_FUNCTION),
                COMPLETED_STREAM_LENGTH,
            ],
        )
        if completed:
            counts = await self.status(batch) or {}
            get_logger().info(
                "batch.completed",
                batch=batch,
                total=counts.get("total"),
                created=counts.get("created"),
                failed=counts.get("failed"),
            )
        return bool(completed)

    async def status(self, batch: str) -> dict[str, Any] | None:
        """Counts of a batch's requests by state; None when the batch is unknown or expired."""
        counters: dict[str, str] = await self.redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
        if not counters:
            return None
        return {
            "batch": batch,
            "total": int(counters.get(BatchField.TOTAL, 0)),
            **{state.value: int(counters.get(state, 0)) for state in State},
            "done": BatchField.COMPLETED_AT in counters,
            # Time the batch's calls spent waiting for the fleet's rate limit, added up.
            "ratelimit_wait_s": round(int(counters.get(BatchField.RATELIMIT_WAIT_MS, 0)) / 1000, 3),
        }

    async def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest batches first, with their counts; expired ones are dropped from the list."""
        names: list[str] = await self.redis.zrange(layout.BATCHES, 0, limit - 1, desc=True)
        found = []
        for name in names:
            status = await self.status(name)
            if status is None:
                await self.redis.zrem(layout.BATCHES, name)
            else:
                found.append(status)
        return found
