"""The dead-letter store: requests that failed for good, to list, retry or purge."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from paylinks.jobs import layout, queue
from paylinks.jobs.batches import Batches, now_ms
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.records import Record, read_record
from paylinks.jobs.scripts import lua


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    failed_at_ms: int

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "checkoutToken": r.checkout_token,
            "batch": r.batch,
            "idempotencyKey": r.key,
            "error": r.error,
            "httpStatus": r.http_status,
            "errorCode": r.error_code,
            "errorType": r.error_type,
            "traceId": r.trace_id,
            "duplicateSessions": list(r.duplicate_sessions),
            "response": r.response,
            "attempts": r.attempts,
            "failedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.failed_at_ms / 1000)),
        }


async def dead_letters(
    redis: Redis, *, batch: str | None = None, token: str | None = None
) -> AsyncIterator[DeadLetter]:
    """Dead letters, oldest first, of one batch or one checkoutToken if given."""
    if token:
        key = layout.idempotency_key(token)
        score = await redis.zscore(layout.DEAD_LETTERS, key)
        entries = [] if score is None else [(key, score)]
    else:
        entries = await redis.zrange(layout.DEAD_LETTERS, 0, -1, withscores=True)
    for key, failed_at in entries:
        record = await read_record(redis, key)
        if record is None:
            # Its record outlived the retention window: nothing left to retry.
            await redis.zrem(layout.DEAD_LETTERS, key)
            continue
        if batch is None or record.batch == batch:
            yield DeadLetter(record, int(failed_at))


class DeadLetters:
    def __init__(self, redis: Redis, config: ProducerConfig) -> None:
        self.redis = redis
        self.config = config
        self.batches = Batches(redis)
        self._requeue = redis.register_script(lua("paylinks.jobs", "requeue"))

    async def retry(self, *, batch: str | None = None, token: str | None = None) -> dict[str, int]:
        """Queue dead letters again under their own idempotency keys.

        Their batches are unsealed while they are queued and sealed again after, so a batch
        completes once, when the last of them ends, not once for each.
        """
        counts = {"retried": 0, "busy": 0}
        letters = [letter async for letter in dead_letters(self.redis, batch=batch, token=token)]
        reopened = {letter.record.batch for letter in letters}
        for name in reopened:
            await self.batches.unseal(name)
        try:
            for letter in letters:
                outcome = await self._requeue_one(letter.record)
                if outcome == 1:
                    counts["retried"] += 1
                elif outcome == -1:
                    counts["busy"] += 1
        finally:
            for name in reopened:
                await self.batches.seal(name)
        return counts

    async def _requeue_one(self, record: Record) -> int:
        now = now_ms()
        outcome: int = await self._requeue(
            keys=[
                layout.checkout_key(record.key),
                layout.batch_key(record.batch),
                layout.batch_members_key(record.batch),
                layout.DEAD_LETTERS,
                layout.arq_job_key(record.key),
                layout.QUEUE,
                layout.arq_in_progress_key(record.key),
            ],
            args=[record.key, queue.job_payload(record.key, now), now, self.ttl_ms],
        )
        return outcome

    async def purge(self, *, batch: str | None = None) -> int:
        """Forget dead letters; their records stay, failed, until they expire."""
        purged = [letter.record.key async for letter in dead_letters(self.redis, batch=batch)]
        if purged:
            await self.redis.zrem(layout.DEAD_LETTERS, *purged)
        return len(purged)

    @property
    def ttl_ms(self) -> int:
        return self.config.result_ttl * 1000
