"""The worker's HTTP port: Prometheus metrics, liveness (/healthz) and readiness (/readyz)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from aiohttp import web
from arq.worker import Worker
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from paylinks.jobs.config import RedisConfig
from paylinks.jobs.connection import address, connect
from paylinks.jobs.queuestate import NEWEST_BATCHES, QueueState, read_queue_state
from paylinks.worker import metrics
from paylinks.worker.config import MetricsConfig

# Seconds a scrape or a readiness probe gives Redis: past it, Redis counts as unreachable.
REDIS_TIMEOUT = 2.0
READY = "ready"


class MetricsPortError(Exception):
    """The port cannot be served (taken, say); the message is one line for the operator."""


class QueueCollector:
    """The queue's state as read at the scrape that is being answered: every worker reports
    the same fleet-wide figures, so rules aggregate them with max(), not sum()."""

    def __init__(self) -> None:
        self.state: QueueState | None = None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "paylinks_redis_up",
            "1 when this scrape read the queue's state from Redis, 0 when Redis did not answer.",
            value=0 if self.state is None else 1,
        )
        state = self.state
        if state is None:
            return
        jobs = GaugeMetricFamily(
            "paylinks_queue_jobs",
            "Jobs on the queue: due (their time has come, those running included) or deferred "
            "(a retry's backoff, a wait for a rate-limit slot).",
            labels=["state"],
        )
        jobs.add_metric(["due"], state.due)
        jobs.add_metric(["deferred"], state.deferred)
        yield jobs
        for name, text, value in (
            (
                "paylinks_queue_jobs_in_progress",
                "Jobs the fleet's workers run, as their health records last said.",
                state.running,
            ),
            (
                "paylinks_queue_oldest_due_age_seconds",
                "Seconds since the oldest due job became due; 0 when none is.",
                state.oldest_due_age_s,
            ),
            (
                "paylinks_dead_letters",
                "Checkout requests that failed for good and are kept as dead letters.",
                state.dead_letters,
            ),
            (
                "paylinks_batches_open",
                f"Batches not yet completed, among the {NEWEST_BATCHES} newest.",
                state.open_batches,
            ),
            (
                "paylinks_workers",
                "Workers registered in Redis whose health record is there.",
                state.workers,
            ),
        ):
            yield GaugeMetricFamily(name, text, value=value)


class Scrape:
    """What /metrics answers: the worker's own figures, then the queue's."""

    def __init__(self, queue: QueueCollector) -> None:
        self.queue = queue

    def collect(self) -> Iterable[Metric]:
        yield from metrics.REGISTRY.collect()
        yield from self.queue.collect()


class Monitor:
    """The port of one worker process, open from before its first job to its exit.

    Served by aiohttp inside the worker's own event loop, not by prometheus_client's server
    thread: a thread would answer /healthz while the loop that runs the jobs is stuck, and
    the queue's state and readiness are read with asyncio Redis, on that loop.
    """

    def __init__(self, config: MetricsConfig, redis: RedisConfig) -> None:
        self.config = config
        self.redis_config = redis
        self.redis = connect(redis)
        # arq's worker now running: it takes no new job once SIGTERM (or SIGINT) came.
        self.worker: Worker | None = None
        self.queue = QueueCollector()
        self._export = make_aiohttp_handler(Scrape(self.queue))
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self) -> None:
        """Listen on the port; raises MetricsPortError when it cannot."""
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.metrics_host, self.config.metrics_port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise MetricsPortError(
                f"cannot serve metrics on {self.config.metrics_host}:{self.config.metrics_port} "
                f"(PAYLINKS_METRICS_PORT): {os.strerror(e.errno).lower() if e.errno else e}"
            ) from None

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        await self.redis.aclose()

    async def healthz(self, _: web.Request) -> web.Response:
        # Answered at all means the event loop that runs the jobs turns.
        return web.Response(text="alive\n")

    async def readyz(self, _: web.Request) -> web.Response:
        reason = await self.not_ready()
        if reason is None:
            return web.Response(text=f"{READY}\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                self.queue.state = await read_queue_state(self.redis)
        except (RedisError, OSError, TimeoutError):
            self.queue.state = None
        return await self._export(request)

    async def not_ready(self) -> str | None:
        """Why the worker is not ready, or None when it is."""
        if self.worker is not None and not self.worker.allow_pick_jobs:
            return "draining after SIGTERM: taking no new job"
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.redis.ping()
        except TimeoutError:
            # The client retries through a Redis restart: a Redis that is gone times out.
            where = address(self.redis_config)
            return f"redis at {where} unreachable (no answer in {REDIS_TIMEOUT:g} s)"
        except (RedisError, OSError) as e:
            return f"redis at {address(self.redis_config)} unreachable ({type(e).__name__})"
        return None


@contextmanager
def serving(
    config: MetricsConfig, redis: RedisConfig, loop: asyncio.AbstractEventLoop
) -> Iterator[Monitor | None]:
    """The worker's port on `loop`, arq's, for as long as the block runs; None when
    PAYLINKS_METRICS_PORT is unset. Raises MetricsPortError."""
    if config.metrics_port is None:
        yield None
        return
    monitor = Monitor(config, redis)
    loop.run_until_complete(monitor.start())
    try:
        yield monitor
    finally:
        loop.run_until_complete(monitor.stop())
