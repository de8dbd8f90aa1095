"""The worker claims queued jobs in batches through arq internals: those internals are what it
was written against, and a batch claim takes what arq's own claim would, and nothing else."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import arq
from arq import Retry, create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker, func
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.worker.claims import ARQ_TESTED, FINISHED_JOBS, ClaimingWorker

# SHA-256 (first 16 hex digits) of the source of each arq method the claim replaces or relies
# on, in the arq releases of ARQ_TESTED. A new arq that changes one fails here, loudly: read
# the change, adapt worker/claims.py, then record the new digest and release.
ARQ_SOURCES = {
    "start_jobs": "b45797cfa40bed7f",
    "_poll_iteration": "f8d39d823a0a59f2",
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    # run_job calls it last, for every job it ran; finish_job is skipped for a job that
    # finished itself.
    "run_job": "589a19059ff84ee7",
    "finish_job": "903f09c92830d3fd",
}
QUEUE = "claims-test"


def test_the_installed_arq_is_a_release_the_claim_was_tested_with() -> None:
    assert arq.VERSION in ARQ_TESTED, (
        f"arq {arq.VERSION} is not among {ARQ_TESTED}: check worker/claims.py against it"
    )


def test_the_arq_internals_the_claim_relies_on_are_unchanged() -> None:
    for method, digest in ARQ_SOURCES.items():
        source = inspect.getsource(getattr(Worker, method))
        assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, (
            f"arq's Worker.{method} changed: check worker/claims.py against it"
        )
    assert str(inspect.signature(Worker.run_job)) == "(self, job_id: str, score: int) -> None"


async def noop(ctx: dict[str, Any], n: int) -> int:
    return n


async def test_one_claim_takes_due_jobs_not_running_elsewhere_up_to_the_room_left(
    redis: Redis, redis_server: RedisServer
) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_server.url), default_queue_name=QUEUE)
    try:
        for n in range(6):
            await pool.enqueue_job("noop", n, _job_id=f"job-{n}")
        await pool.enqueue_job("noop", 6, _job_id="later", _defer_by=600)
        # Another worker runs job-1; job-2 finished and left the queue.
        await redis.set(in_progress_key_prefix + "job-1", "1")
        await redis.zrem(QUEUE, "job-2")
        worker = ClaimingWorker(
            functions=[func(noop, name="noop")],
            redis_pool=pool,
            queue_name=QUEUE,
            max_jobs=4,
            keep_result=0,
        )
        worker.job_counter = 1  # one job of this worker's own is still running
        ids = [f"job-{n}".encode() for n in range(6)] + [b"later"]
        await worker.start_jobs(ids)

        assert sorted(worker.tasks) == ["job-0", "job-3", "job-4"]
        assert worker.job_counter == 4
        for job_id in ("job-0", "job-3", "job-4"):
            assert await redis.pttl(in_progress_key_prefix + job_id) > 0
        for job_id in ("job-5", "later"):
            assert not await redis.exists(in_progress_key_prefix + job_id)

        await asyncio.gather(*worker.tasks.values())
        assert worker.jobs_complete == 3
        assert worker.job_counter == 1
        assert await redis.zrange(QUEUE, 0, -1) == ["job-1", "job-5", "later"]
    finally:
        await pool.aclose()


async def test_a_job_that_finished_itself_is_not_finished_again_nor_queued_again(
    redis: Redis, redis_server: RedisServer
) -> None:
    runs: list[str] = []

    async def finishes_itself(ctx: dict[str, Any], n: int) -> int:
        job_id = ctx["job_id"]
        runs.append(job_id)
        # As the outcome's script does with the request's last move.
        await redis.zrem(QUEUE, job_id)
        await redis.delete(*(p + job_id for p in (job_key_prefix, in_progress_key_prefix)))
        await redis.delete(retry_key_prefix + job_id)
        ctx[FINISHED_JOBS].add(job_id)
        if n == 1:
            # A deadline that strikes after the move: arq would put the job back on the queue
            # (ZINCRBY adds a member that is gone) and run it again, finding no job.
            raise Retry(defer=0.01)
        return n

    pool = await create_pool(RedisSettings.from_dsn(redis_server.url), default_queue_name=QUEUE)
    try:
        for n in range(3):
            await pool.enqueue_job("finishes_itself", n, _job_id=f"job-{n}")
        worker = ClaimingWorker(
            functions=[func(finishes_itself, name="finishes_itself")],
            redis_pool=pool,
            queue_name=QUEUE,
            burst=True,
            poll_delay=0.01,
            keep_result=0,
        )
        await worker.main()
        assert sorted(runs) == ["job-0", "job-1", "job-2"], "each job ran once"
        assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (2, 1, 0)
        assert worker.finished_jobs == set()
        assert await redis.zrange(QUEUE, 0, -1) == []
        assert await redis.keys("arq:*") == []
    finally:
        await pool.aclose()
