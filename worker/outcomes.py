"""Writes each step of a checkout job to its record and its batch's counters, atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from jobs import keys
from jobs.batches import Batches
from jobs.records import Record, State, lua


@dataclass(frozen=True)
class Transition:
    previous: str
    attempts: int
    completed_batch: bool


class Outcomes:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.batches = Batches(redis)
        self._transition = redis.register_script(lua("worker", "transition"))

    async def move(
        self,
        record: Record,
        state: State,
        *,
        new_attempt: bool = False,
        **fields: str | int | None,
    ) -> Transition:
        """Move `record` to `state`, storing `fields`; a final record is never moved again."""
        now = int(time.time() * 1000)
        pairs: list[str | int] = []
        for name, value in fields.items():
            pairs += [name, "" if value is None else value]
        previous, attempts, ending = await self._transition(
            keys=[keys.checkout_key(record.key), keys.batch_key(record.batch), keys.DEAD_LETTERS],
            args=[record.key, state.value, now, "1" if new_attempt else "0", *pairs],
        )
        # Many workers may see the last counts together; only one completes the batch.
        completed = bool(ending) and await self.batches.complete(record.batch)
        return Transition(previous, int(attempts), completed)
