"""The queue's own state as Redis holds it, read in two round trips of cheap commands."""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.layout import BatchField

# arq's health record: "<date> j_complete=3 j_failed=0 j_retried=1 j_ongoing=2 queued=0".
_COUNT = re.compile(r"\b(j_complete|j_failed|j_retried|j_ongoing|queued)=(\d+)")
# Open batches are counted among this many of the newest: counting every batch kept (a result
# TTL's worth) would cost a read per batch on every scrape.
NEWEST_BATCHES = 100


def health_counts(record: str) -> dict[str, int]:
    """arq's counts in a worker's health record (`layout.worker_health_key`)."""
    return {name: int(n) for name, n in _COUNT.findall(record)}


@dataclass(frozen=True)
class QueueState:
    # Jobs whose time has come, those a worker runs right now included (arq keeps a job on
    # the queue until its run ends).
    due: int
    # Jobs waiting for their time: a retry's backoff, a deferral for a rate-limit slot.
    deferred: int
    # Jobs the workers run, as their health records last said (one health-check interval old
    # at most).
    running: int
    dead_letters: int
    # Seconds since the oldest due job became due; 0 when none is.
    oldest_due_age_s: float
    # Batches not completed, among the newest `NEWEST_BATCHES`.
    open_batches: int
    # Workers registered whose health record is there.
    workers: int


async def read_queue_state(redis: Redis) -> QueueState:
    """The queue's state now: ZCARD, ZCOUNT and small reads, never a walk of the keyspace."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(layout.QUEUE)
        pipe.zrange(layout.QUEUE, 0, 0, withscores=True)
        pipe.zcard(layout.DEAD_LETTERS)
        pipe.zrange(layout.WORKERS, 0, -1)
        pipe.zrange(layout.BATCHES, 0, NEWEST_BATCHES - 1, desc=True)
        (seconds, micros), queued, oldest, dead, workers, batches = await pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(layout.QUEUE, "-inf", now_ms)
        for key in workers:
            pipe.get(key)
        for batch in batches:
            pipe.hmget(layout.batch_key(batch), [BatchField.TOTAL, BatchField.COMPLETED_AT])
        due, *found = await pipe.execute()
    records = [r for r in found[: len(workers)] if r is not None]
    # An expired batch has no total; a completed one has its completion time.
    open_batches = sum(1 for total, done in found[len(workers) :] if total and not done)
    oldest_due_ms = int(oldest[0][1]) if oldest else now_ms
    return QueueState(
        due=due,
        deferred=queued - due,
        running=sum(health_counts(r).get("j_ongoing", 0) for r in records),
        dead_letters=dead,
        oldest_due_age_s=max(0, now_ms - oldest_due_ms) / 1000,
        open_batches=open_batches,
        workers=len(records),
    )
