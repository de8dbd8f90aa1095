"""arq's worker, claiming the queued jobs it has room for, and reading them, in one round trip
instead of five each, and leaving a job that finished itself as it is."""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript

from paylinks.jobs.scripts import lua

# The arq releases whose `Worker` internals this subclass was checked against
# (tests/test_claims.py fails when an installed arq is outside them, or they change).
ARQ_TESTED = ("0.28.0",)
# Where a job finds the set of job ids whose arq job it finished itself (`ctx[FINISHED_JOBS]`).
FINISHED_JOBS = "finished_jobs"
# Seconds a job's retry counter is kept after its last run, as arq's `run_job` keeps it.
RETRY_COUNTER_LIFETIME = 88400

# What the claim read for the job the current task runs: its job (None once expired) and its
# try, counted. Set in the job's own task, and taken by the first pipeline it opens.
_CLAIMED: ContextVar[tuple[bytes | None, int] | None] = ContextVar("claimed", default=None)


class ClaimingPool(ArqRedis):
    """arq's client, whose first pipeline in a claimed job's task is `ClaimedRead`: the read
    `Worker.run_job` opens with, made by the claim already."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        claimed = _CLAIMED.get()
        if claimed is None:
            return super().pipeline(transaction, shard_hint)
        _CLAIMED.set(None)
        return ClaimedRead(*claimed)


class ClaimedRead:
    """Stands in for the pipeline `Worker.run_job` reads a job with (GET the job, INCR and
    EXPIRE its retry counter, and EXEC) and answers as that pipeline would, from the claim."""

    def __init__(self, job: bytes | None, job_try: int) -> None:
        self._replies = [job, job_try, True]

    async def __aenter__(self) -> ClaimedRead:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None

    def get(self, name: str) -> None:
        """Made by the claim (as are `incr` and `expire`)."""

    def incr(self, name: str) -> None:
        """Made by the claim."""

    def expire(self, name: str, time: int) -> None:
        """Made by the claim."""

    async def execute(self) -> list[Any]:
        return self._replies


class ClaimingWorker(Worker):
    """arq's `Worker`, but `start_jobs` claims every job it has room for with one script
    (`lua/claim.lua`): the same checks arq makes one job at a time (on the queue, due, not
    running elsewhere), and the same in-progress key, set atomically. The script also makes
    the read each job's `run_job` would make first, which its pool (a `ClaimingPool`) then
    answers without asking Redis.

    A job whose last move finished its arq job in the same script (`Outcomes`, given
    `ctx[FINISHED_JOBS]`) names it there, and `finish_job`, arq's round trip to do the same,
    is skipped for it: the worker keeps no results (`keep_result` 0), so there is nothing
    else for it to write.

    arq offers no hook for either: this overrides `Worker.start_jobs` and `Worker.finish_job`,
    relies on `run_job` opening with that read (and no abort check: `allow_abort_jobs` off),
    and uses the attributes `start_jobs` uses (`sem`, `job_counter`, `max_jobs`,
    `in_progress_timeout_s`, `tasks`, `run_job`, `_release_sem_dec_counter_on_complete`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.allow_abort_jobs or not isinstance(self.pool, ClaimingPool):
            raise ValueError("ClaimingWorker needs a ClaimingPool and allow_abort_jobs off")
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
        claimed: list[Any] = await self._claim(
            keys=[self.queue_name],
            args=[
                timestamp_ms(),
                int(self.in_progress_timeout_s * 1000),
                in_progress_key_prefix,
                job_key_prefix,
                retry_key_prefix,
                RETRY_COUNTER_LIFETIME,
                room,
                *job_ids,
            ],
        )
        for at in range(0, len(claimed), 4):
            job_id_b, score, job, job_try = claimed[at : at + 4]
            # Never blocks: the semaphore has a place more than `max_jobs`, and fewer than
            # `room` jobs hold one.
            await self.sem.acquire()
            self.job_counter += 1
            job_id = job_id_b.decode()
            run = self._run_claimed(job_id, int(float(score)), job, job_try)
            task = self.loop.create_task(run)
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _run_claimed(self, job_id: str, score: int, job: bytes | None, job_try: int) -> None:
        # In this task's own context: the read is the first pipeline this task's run_job opens.
        _CLAIMED.set((job, job_try))
        await self.run_job(job_id, score)

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        if job_id in self.finished_jobs:
            # Finished by the job's own last move; a deadline or a cancellation after it must
            # not put the job back on the queue either.
            self.finished_jobs.discard(job_id)
            return
        await super().finish_job(job_id, *args, **kwargs)
