"""The worker claims queued jobs in batches, and reads them, through arq internals: those
internals are what it was written against, and a batch claim takes what arq's own claim
would, and reads each job as arq's run_job would, and nothing else."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import arq
import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker, func
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.connection import arq_pool, settings_for
from paylinks.worker.claims import (
    ARQ_TESTED,
    FINISHED_JOBS,
    RETRY_COUNTER_LIFETIME,
    ClaimingPool,
    ClaimingWorker,
)

# SHA-256 (first 16 hex digits) of the source of each arq method the claim replaces or relies
# on, in the arq releases of ARQ_TESTED. A new arq that changes one fails here, loudly: read
# the change, adapt worker/claims.py, then record the new digest and release.
ARQ_SOURCES = {
    "start_jobs": "b45797cfa40bed7f",
    "_poll_iteration": "f8d39d823a0a59f2",
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    # run_job opens with the read the claim makes for it, and calls finish_job last, for
    # every job it ran; finish_job is skipped for a job that finished itself.
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


def claiming_pool(redis_server: RedisServer) -> ArqRedis:
    pool = arq_pool(settings_for(redis_server.url), ClaimingPool)
    # arq's own queue and serializer, as the workers here use them.
    pool.default_queue_name = QUEUE
    pool.job_serializer = pool.job_deserializer = None
    return pool


async def test_one_claim_takes_due_jobs_not_running_elsewhere_up_to_the_room_left(
    redis: Redis, redis_server: RedisServer
) -> None:
    pool = claiming_pool(redis_server)
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

    pool = claiming_pool(redis_server)
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


async def transactions(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_the_claim_reads_each_job_claimed_as_run_job_would_and_run_job_asks_no_more(
    redis: Redis, redis_server: RedisServer
) -> None:
    seen: list[tuple[str, int, int]] = []

    async def finishes_itself(ctx: dict[str, Any], n: int) -> int:
        seen.append((ctx["job_id"], ctx["job_try"], n))
        await redis.zrem(QUEUE, ctx["job_id"])
        await redis.delete(*(p + ctx["job_id"] for p in (job_key_prefix, in_progress_key_prefix)))
        await redis.delete(retry_key_prefix + ctx["job_id"])
        ctx[FINISHED_JOBS].add(ctx["job_id"])
        return n

    pool = claiming_pool(redis_server)
    try:
        await pool.enqueue_job("finishes_itself", 7, _job_id="job-7")
        # A job run before, by a worker that died: its try is counted on.
        await redis.set(retry_key_prefix + "job-7", 2)
        worker = ClaimingWorker(
            functions=[func(finishes_itself, name="finishes_itself")],
            redis_pool=pool,
            queue_name=QUEUE,
            keep_result=0,
        )
        before = await transactions(redis)
        await worker.start_jobs([b"job-7"])
        # Counted and kept by the claim, before the job's task has run at all.
        assert seen == []
        assert await redis.get(retry_key_prefix + "job-7") == "3"
        assert await redis.ttl(retry_key_prefix + "job-7") > RETRY_COUNTER_LIFETIME - 5
        await asyncio.gather(*worker.tasks.values())

        assert seen == [("job-7", 3, 7)]
        assert worker.jobs_complete == 1
        # arq's run_job reads a job in a MULTI/EXEC of its own: the claim made that read.
        assert await transactions(redis) == before
        # Outside a claimed job's first read, the pool's pipelines are Redis' own.
        async with pool.pipeline(transaction=True) as pipe:
            pipe.set("left", "1")
            pipe.get("left")
            assert await pipe.execute() == [True, b"1"]
        assert await transactions(redis) == before + 1
    finally:
        await pool.aclose()


async def test_a_claimed_job_whose_job_expired_fails_as_arq_fails_it(
    redis: Redis, redis_server: RedisServer
) -> None:
    pool = claiming_pool(redis_server)
    try:
        await pool.enqueue_job("noop", 1, _job_id="gone")
        await redis.delete(job_key_prefix + "gone")
        worker = ClaimingWorker(
            functions=[func(noop, name="noop")], redis_pool=pool, queue_name=QUEUE, keep_result=0
        )
        await worker.start_jobs([b"gone"])
        await asyncio.gather(*worker.tasks.values())

        assert (worker.jobs_complete, worker.jobs_failed) == (0, 1)
        assert await redis.zrange(QUEUE, 0, -1) == []
        assert await redis.keys("arq:*") == []
    finally:
        await pool.aclose()


async def test_the_claiming_worker_refuses_a_pool_that_would_read_each_job_again(
    redis_server: RedisServer,
) -> None:
    plain = arq_pool(settings_for(redis_server.url))
    claiming = claiming_pool(redis_server)
    try:
        with pytest.raises(ValueError, match="ClaimingPool"):
            ClaimingWorker(functions=[func(noop, name="noop")], redis_pool=plain)
        with pytest.raises(ValueError, match="allow_abort_jobs"):
            ClaimingWorker(
                functions=[func(noop, name="noop")], redis_pool=claiming, allow_abort_jobs=True
            )
    finally:
        await plain.aclose()
        await claiming.aclose()
