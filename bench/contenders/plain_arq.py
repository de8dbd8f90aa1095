"""Contender (b): arq as its documentation shows it, with a job that only posts the body.

    python -m bench.contenders.plain_arq REDIS_URL URL [CONCURRENCY]

runs one burst worker (`max_jobs` = CONCURRENCY) on arq's default queue until it is empty.
Everything else is arq's default: pickled jobs, results kept an hour, a 0.5 s poll delay;
the loop is uvloop, as paylinks' worker's is.
No idempotency record, no state machine, no rate limiter, no log events of its own.
`enqueue` puts the bodies on that queue first with arq's `enqueue_job`, job id = the key.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

import aiohttp
import uvloop
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Function, func, run_worker

from bench.contenders import base_headers

FUNCTION = "post_checkout"


async def post_checkout(ctx: dict[str, Any], key: str, body: bytes) -> int:
    headers = {**ctx["headers"], "Idempotency-Key": key}
    async with ctx["http"].post(ctx["url"], data=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def startup(ctx: dict[str, Any]) -> None:
    timeout = aiohttp.ClientTimeout(total=15, connect=5)
    connector = aiohttp.TCPConnector(limit=ctx["concurrency"])
    ctx["http"] = aiohttp.ClientSession(timeout=timeout, connector=connector)
    ctx["headers"] = base_headers()


async def shutdown(ctx: dict[str, Any]) -> None:
    if "http" in ctx:
        await ctx["http"].close()


class WorkerSettings:
    functions: ClassVar[list[Function]] = [func(post_checkout, name=FUNCTION)]
    on_startup = startup
    on_shutdown = shutdown


async def enqueue(redis_url: str, pairs: list[tuple[str, bytes]], at_once: int = 50) -> int:
    """Queue one job per body with arq's own `enqueue_job` (`at_once` calls in flight)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    semaphore = asyncio.Semaphore(at_once)

    async def one(key: str, body: bytes) -> bool:
        async with semaphore:
            return await pool.enqueue_job(FUNCTION, key, body, _job_id=key) is not None

    try:
        queued = await asyncio.gather(*(one(key, body) for key, body in pairs))
    finally:
        await pool.aclose()
    return sum(queued)


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    redis_url, url = sys.argv[1], sys.argv[2]
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(redis_url),
        ctx={"url": url, "concurrency": concurrency},
        max_jobs=concurrency,
        burst=True,
    )


if __name__ == "__main__":
    main()
