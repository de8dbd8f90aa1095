"""Batches as the dashboard shows them: newest first, one at a time, their requests paged."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from paylinks.dashboard.progress import Progress, RateTracker
from paylinks.dashboard.requests import RequestRow, read_rows
from paylinks.jobs import layout
from paylinks.jobs.layout import BatchField, State


@dataclass(frozen=True)
class BatchView:
    name: str
    counts: dict[str, int]
    created_at_ms: int | None
    completed_at_ms: int | None
    ratelimit_wait_s: float
    progress: Progress

    @property
    def done(self) -> bool:
        return self.completed_at_ms is not None

    def as_json(self) -> dict[str, Any]:
        """What `/api/batches` answers for the pages' live updates (`static/live.js`): the
        counts under their names in Redis, and the rest under names of its own."""
        p = self.progress
        return {
            "batch": self.name,
            **self.counts,
            "done": self.done,
            "percent": round(p.percent, 1),
            "rate": round(p.rate, 1) if p.rate is not None else None,
            "eta_s": round(p.eta_s) if p.eta_s is not None else None,
            "completed_at": utc(self.completed_at_ms),
            "ratelimit_wait_s": self.ratelimit_wait_s,
        }


def utc(ms: int | None) -> str | None:
    """A time in ms since the epoch as people read it, in UTC."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def batch_view(name: str, fields: dict[str, str], rates: RateTracker) -> BatchView:
    counts = {BatchField.TOTAL.value: int(fields.get(BatchField.TOTAL, 0))}
    counts |= {state.value: int(fields.get(state, 0)) for state in State}
    created_at = _int(fields.get(BatchField.CREATED_AT))
    completed_at = _int(fields.get(BatchField.COMPLETED_AT))
    status = {"batch": name, **counts, "done": completed_at is not None}
    return BatchView(
        name=name,
        counts=counts,
        created_at_ms=created_at,
        completed_at_ms=completed_at,
        ratelimit_wait_s=round(int(fields.get(BatchField.RATELIMIT_WAIT_MS, 0)) / 1000, 3),
        progress=rates.progress(status, created_at),
    )


async def read_batches(redis: Redis, names: list[str], rates: RateTracker) -> list[BatchView]:
    """The batches named that still exist, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(layout.batch_key(name))
        hashes: list[dict[str, str]] = await pipe.execute()
    return [batch_view(n, h, rates) for n, h in zip(names, hashes, strict=True) if h]


async def recent(
    redis: Redis, page: int, per_page: int, rates: RateTracker
) -> tuple[list[BatchView], bool]:
    """One page of batches, newest first, and whether an older page follows."""
    start = page * per_page
    names: list[str] = await redis.zrange(layout.BATCHES, start, start + per_page, desc=True)
    more = len(names) > per_page
    return await read_batches(redis, names[:per_page], rates), more


async def one(redis: Redis, name: str, rates: RateTracker) -> BatchView | None:
    found = await read_batches(redis, [name], rates)
    return found[0] if found else None


async def request_page(
    redis: Redis, batch: str, page: int, per_page: int
) -> tuple[list[RequestRow], bool]:
    """One page of a batch's requests in enqueue order, and whether another follows."""
    start = page * per_page
    page_keys: list[str] = await redis.lrange(  # type: ignore[misc]
        layout.batch_members_key(batch), start, start + per_page
    )
    rows = await read_rows(redis, page_keys[:per_page])
    return rows, len(page_keys) > per_page
