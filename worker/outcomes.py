"""Writes each step of a checkout job to its record and its batch's counters, atomically."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.batches import Batches, now_ms
from paylinks.jobs.layout import RecordField, State
from paylinks.jobs.records import Record
from paylinks.jobs.scripts import lua
from paylinks.worker.autopipeline import AutoPipeline


class Outcomes:
    """Moves of checkout records. Given `finished_jobs` (ClaimingWorker's), a move to a final
    state also finishes the request's arq job, in the same script, and adds its id there: the
    worker then skips its own finish, a round trip a request. Given a `pipeline`, moves are
    sent through it."""

    def __init__(
        self,
        redis: Redis,
        finished_jobs: set[str] | None = None,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        self.redis = redis
        self.batches = Batches(redis)
        self.finished_jobs = finished_jobs
        # Through the worker's pipeline when given: a move per job, sent with the others.
        self._transition = (pipeline or redis).register_script(lua("paylinks.worker", "transition"))

    async def move(
        self,
        record: Record,
        state: State,
        fields: Mapping[RecordField, str | int | None] | None = None,
        *,
        new_attempt: bool = False,
        announce: Callable[[], None] | None = None,
    ) -> int:
        """Move `record` to `state`, storing `fields`; a final record is never moved again.

        `announce` logs the outcome once it is stored and before the batch it may complete,
        so that a batch's last checkout event comes before its `batch.completed`.
        Returns the record's attempts, counting a new one if asked.
        """
        pairs: list[str | int] = []
        for name, value in (fields or {}).items():
            if value in (None, "") and state is State.CREATED:
                # The record becomes its result, made of the fields given: none to clear.
                continue
            pairs += [name, "" if value is None else value]
        keys = [
            layout.checkout_key(record.key),
            layout.batch_key(record.batch),
            layout.DEAD_LETTERS,
            layout.result_key(record.key),
        ]
        if state.final and self.finished_jobs is not None:
            keys += [
                layout.QUEUE,
                layout.arq_job_key(record.key),
                layout.arq_in_progress_key(record.key),
                layout.arq_retry_key(record.key),
            ]
        attempts, all_ended, finished_job = await self._transition(
            keys=keys,
            args=[record.key, state.value, now_ms(), "1" if new_attempt else "0", *pairs],
        )
        if finished_job and self.finished_jobs is not None:
            self.finished_jobs.add(record.key)
        if announce:
            announce()
        if all_ended:
            # Many workers may see the last counts together; only one completes the batch.
            await self.batches.complete(record.batch)
        return int(attempts)
