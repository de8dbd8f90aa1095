"""arq's worker, claiming the queued jobs it has room for in one round trip instead of four each,
and leaving a job that finished itself as it is."""

from __future__ import annotations

from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript

from paylinks.jobs.scripts import lua

# The arq releases whose `Worker` internals this subclass was checked against
# (tests/test_claims.py fails when an installed arq is outside them, or they change).
ARQ_TESTED = ("0.28.0",)
# Where a job finds the set of job ids whose arq job it finished itself (`ctx[FINISHED_JOBS]`).
FINISHED_JOBS = "finished_jobs"


class ClaimingWorker(Worker):
    """arq's `Worker`, but `start_jobs` claims every job it has room for with one script
    (`lua/claim.lua`): the same checks arq makes one job at a time (on the queue, due, not
    running elsewhere), and the same in-progress key, set atomically.

    A job whose last move finished its arq job in the same script (`Outcomes`, given
    `ctx[FINISHED_JOBS]`) names it there, and `finish_job`, arq's round trip to do the same,
    is skipped for it: the worker keeps no results (`keep_result` 0), so there is nothing
    else for it to write.

    arq offers no hook for either: this overrides `Worker.start_jobs` and `Worker.finish_job`
    and uses the attributes `start_jobs` uses (`sem`, `job_counter`, `max_jobs`,
    `in_progress_timeout_s`, `tasks`, `run_job`, `_release_sem_dec_counter_on_complete`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # arq opens its connection pool when it starts: the script is registered on it then.
        self._claim: AsyncScript | None = None
        self.finished_jobs: set[str] = set()
        self.ctx[FINISHED_JOBS] = self.finished_jobs

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        room = self.max_jobs - self.job_counter
        # The queue keeps a job until it finished: those this worker runs are not asked about.
        job_ids = [job_id for job_id in job_ids if job_id.decode() not in self.tasks]
        if room <= 0 or not job_ids:
            return
        if self._claim is None:
            self._claim = self.pool.register_script(lua("paylinks.worker", "claim"))
        claimed: list[bytes] = await self._claim(
            keys=[self.queue_name],
            args=[
                timestamp_ms(),
                int(self.in_progress_timeout_s * 1000),
                in_progress_key_prefix,
                room,
                *job_ids,
            ],
        )
        for job_id_b, score in zip(claimed[::2], claimed[1::2], strict=True):
            # Never blocks: the semaphore has a place more than `max_jobs`, and fewer than
            # `room` jobs hold one.
            await self.sem.acquire()
            self.job_counter += 1
            job_id = job_id_b.decode()
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        if job_id in self.finished_jobs:
            # Finished by the job's own last move; a deadline or a cancellation after it must
            # not put the job back on the queue either.
            self.finished_jobs.discard(job_id)
            return
        await super().finish_job(job_id, *args, **kwargs)
