"""arq's settings for a paylinks worker, and how a worker process starts."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import time
from typing import Any
from urllib.parse import unquote

from arq import func
from redis.exceptions import RedisError

from paylinks.jobs import layout, queue
from paylinks.jobs.connection import (
    RedisCredentialsRejectedError,
    RedisUnreachableError,
    arq_pool,
    check_reachable,
    connect,
    where,
)
from paylinks.jobs.logs import configure, get_logger
from paylinks.worker.auth import (
    AuthError,
    CredentialsRejectedError,
    access_tokens,
    credential_id,
    rejected_credentials,
)
from paylinks.worker.autopipeline import AutoPipeline
from paylinks.worker.claims import FINISHED_JOBS, ClaimingPool, ClaimingWorker
from paylinks.worker.config import EXIT_CONFIG, ConomyConfig, MetricsConfig, WorkerConfig, load
from paylinks.worker.conomy import ConomyClient, open_http
from paylinks.worker.health import HealthConfig
from paylinks.worker.monitor import Monitor, serving
from paylinks.worker.outcomes import Outcomes
from paylinks.worker.ratelimit import Limiter, RateLimit
from paylinks.worker.registry import Registration
from paylinks.worker.tasks import Deps, create_checkout_session
from paylinks.worker.webhooks import notify_batch_completed


async def startup(ctx: dict[str, Any]) -> None:
    config: WorkerConfig = ctx["config"]
    conomy: ConomyConfig = ctx["conomy"]
    redis = connect(config)
    http = open_http(config)
    tokens = access_tokens(conomy, redis, http)
    client = ConomyClient(conomy, http, tokens)
    limit = RateLimit(
        rate=config.rate_limit,
        burst=config.rate_burst,
        max_in_flight=config.max_in_flight,
        # A lease covers the wait for its slot and the call; past that it is a dead worker's.
        lease_seconds=config.rate_max_wait + config.http_timeout + 5,
        adaptive=config.rate_adaptive,
        jitter=config.rate_jitter,
    )
    # The scripts every job calls (its slot, its moves), pipelined with the other jobs'.
    pipeline = AutoPipeline(redis)
    limiter = Limiter(redis, credential_id(conomy), limit, pipeline)
    # Under arq's own Worker (its CLI) there is no such set, and arq finishes every job.
    outcomes = Outcomes(redis, ctx.get(FINISHED_JOBS), pipeline)
    ctx["paylinks"] = Deps(config, redis, pipeline, http, client, outcomes, limiter)
    # A token before the first job: credentials the endpoint refuses stop the worker here,
    # before any job spends an attempt on them (the token is cached for the fleet anyway).
    try:
        await tokens.get()
    except AuthError as e:
        if e.rejected:
            raise CredentialsRejectedError(rejected_credentials(conomy, e)) from None
        get_logger().warning("auth.unavailable", reason=str(e))
    if "health_key" in ctx:  # an arq worker (`worker_settings`), which writes that record
        # Where the dashboard finds this worker's health record and its credential's limiter.
        registration = Registration(
            redis, ctx["health_key"], credential_id(conomy), ctx["health"].health_check_interval
        )
        await registration.start()
        ctx["registration"] = registration


async def shutdown(ctx: dict[str, Any]) -> None:
    deps: Deps | None = ctx.get("paylinks")
    registration: Registration | None = ctx.get("registration")
    if registration:  # arq has deleted the health record by now
        await registration.stop()
    if deps:
        await deps.http.close()
        await deps.pipeline.aclose()
        await deps.redis.aclose()


# What arq reads that no setting changes.
FIXED: dict[str, Any] = {
    "functions": [
        func(create_checkout_session, name=queue.JOB_FUNCTION),
        func(notify_batch_completed, name=queue.WEBHOOK_FUNCTION),
    ],
    "queue_name": layout.QUEUE,
    "on_startup": startup,
    "on_shutdown": shutdown,
    "job_serializer": queue.serialize,
    "job_deserializer": queue.deserialize,
    # The checkout record is the result producers read; arq's copy would only take memory.
    "keep_result": 0,
    # Short, so a request enqueued at low load starts within about 20 ms; an idle worker
    # pays 50 cheap ZRANGEBYSCOREs a second for it.
    "poll_delay": 0.02,
}
ARQ_MAX_RUNS = 1_000_000
# Allocations (less frees) between two collections of the youngest generation. Python's 700
# made the collector run about 70 times a second and take a tenth of the worker's CPU (timed
# with `gc.callbacks` while it drained the throughput bench's 10,000 requests), for the few
# cycles a job leaves: nearly everything it allocates is freed at once by reference counting.
GC_THRESHOLD = 10_000
# Seconds between a worker losing Redis for good and starting again.
RESTART_DELAY = 1.0


def worker_settings(
    config: WorkerConfig, conomy: ConomyConfig, health: HealthConfig | None = None
) -> dict[str, Any]:
    """arq's settings for a paylinks worker: the one place `paylinks worker` and arq's own
    CLI (`arq paylinks.worker.app.WorkerSettings`) take them from. `health` is read from
    the environment when not given."""
    health = health or load(HealthConfig)
    health_key = layout.worker_health_key(socket.gethostname(), os.getpid())
    return {
        **FIXED,
        "ctx": {"config": config, "conomy": conomy, "health": health, "health_key": health_key},
        # arq's own client, made where ours is: the same user, TLS, sentinels and retries.
        "redis_pool": arq_pool(config, ClaimingPool),
        "max_jobs": config.concurrency,
        "job_timeout": config.job_timeout,
        # arq counts every run (a deferral for a slot, a Redis hiccup, a restart after
        # SIGTERM) and drops the job silently past its cap. Our job caps attempts itself
        # and records the failure, so arq's cap is only a last resort.
        "max_tries": ARQ_MAX_RUNS,
        # On SIGTERM: take no new job, give calls in flight this long, then cancel the rest
        # (a cancelled job is queued again and resends its Idempotency-Key).
        "job_completion_wait": config.shutdown_grace,
        # A health record of this process's own, so that the fleet's workers can be counted
        # (arq's default, one key per queue, is overwritten by every worker). This is also
        # the key `arq ... --check` reads, in its own process: it finds no worker's there.
        "health_check_key": health_key,
        "health_check_interval": health.health_check_interval,
    }


def __getattr__(name: str) -> Any:
    # `arq paylinks.worker.app.WorkerSettings`: arq takes its settings from this name before
    # it starts, so the configuration is read when arq asks for them, not at import.
    if name == "WorkerSettings":
        config, conomy = load(WorkerConfig), load(ConomyConfig)
        # arq's CLI then sets up its own loggers; paylinks' events are still redacted JSON.
        configure(config.log_level, secrets(config, conomy))
        return worker_settings(config, conomy)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def secrets(config: WorkerConfig, conomy: ConomyConfig) -> list[str]:
    """Values the log must never show."""
    values = [conomy.api_key.get_secret_value()]
    if config.redis_url.password:
        # As written in the URL, and as sent to Redis.
        values += {config.redis_url.password, unquote(config.redis_url.password)}
    for secret in (
        conomy.access_token,
        conomy.client_secret,
        config.webhook_secret,
        config.redis_sentinel_password,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


def run(config: WorkerConfig, conomy: ConomyConfig, *, burst: bool = False) -> None:
    """Run a worker; a burst worker whose Redis is not there or stays away raises
    RedisUnreachableError, a long-running one waits for it. Raises MetricsPortError when
    PAYLINKS_METRICS_PORT cannot be served."""
    configure(config.log_level, secrets(config, conomy))
    # What is loaded by now (modules, settings) lives as long as the process: frozen, the
    # collector no longer walks it on every full collection.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)
    # The loop arq's workers run on (it takes the current one), and the metrics port with them.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with serving(load(MetricsConfig), config, loop) as monitor:
            _run(config, conomy, burst, monitor)
    finally:
        loop.close()


def _run(config: WorkerConfig, conomy: ConomyConfig, burst: bool, monitor: Monitor | None) -> None:
    waiting_for = f"redis at {where(config)}"
    try:
        check_reachable(config)
    except RedisUnreachableError as e:
        # Credentials Redis refuses stay refused: waiting for them would hide the mistake.
        if burst or isinstance(e, RedisCredentialsRejectedError):
            raise
        get_logger().warning("worker.waiting", reason=str(e), waiting_for=waiting_for)
    while True:
        try:
            worker = ClaimingWorker(**worker_settings(config, conomy), burst=burst)
            if monitor:
                monitor.worker = worker
            worker.run()
            return
        except CredentialsRejectedError as e:
            print(f"paylinks: configuration error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        except RedisError as e:
            # arq's poll loop ends on a Redis error its retries did not ride out (a WATCH
            # across a restart, or Redis away for longer). Jobs in flight have finished by
            # now; a new worker takes over where the queue stands, unless this one was told to
            # stop (SIGTERM, Ctrl-C): its closing writes then failed, and stopping it is done.
            if not worker.allow_pick_jobs:
                get_logger().warning("worker.stopped", reason=f"redis: {type(e).__name__}")
                return
            if burst:
                raise RedisUnreachableError(
                    f"lost Redis at {where(config)}: {type(e).__name__}"
                ) from None
            get_logger().warning(
                "worker.restarted", reason=f"redis: {type(e).__name__}", waiting_for=waiting_for
            )
            time.sleep(RESTART_DELAY)
