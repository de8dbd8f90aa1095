"""arq's WorkerSettings for paylinks, and how a worker process starts from the configuration."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from arq import func
from arq.connections import RedisSettings
from arq.worker import Function, run_worker
from redis.exceptions import RedisError

from paylinks.jobs import layout, queue
from paylinks.jobs.connection import RETRY_ON_ERROR, connect, restart_retry
from paylinks.jobs.logs import configure, get_logger
from paylinks.worker.auth import access_tokens, credential_id
from paylinks.worker.config import ConomyConfig, WorkerConfig
from paylinks.worker.conomy import ConomyClient, open_http
from paylinks.worker.outcomes import Outcomes
from paylinks.worker.ratelimit import Limiter, RateLimit
from paylinks.worker.tasks import Deps, create_checkout_session
from paylinks.worker.webhooks import notify_batch_completed


async def startup(ctx: dict[str, Any]) -> None:
    config: WorkerConfig = ctx["config"]
    conomy: ConomyConfig = ctx["conomy"]
    redis = connect(str(config.redis_url))
    http = open_http(config)
    client = ConomyClient(conomy, http, access_tokens(conomy, redis, http))
    limit = RateLimit(
        rate=config.rate_limit,
        burst=config.rate_burst,
        max_in_flight=config.max_in_flight,
        # A lease covers the wait for its slot and the call; past that it is a dead worker's.
        lease_seconds=config.rate_max_wait + config.http_timeout + 5,
        adaptive=config.rate_adaptive,
        jitter=config.rate_jitter,
    )
    limiter = Limiter(redis, credential_id(conomy), limit)
    ctx["paylinks"] = Deps(config, redis, http, client, Outcomes(redis), limiter)


async def shutdown(ctx: dict[str, Any]) -> None:
    deps: Deps | None = ctx.get("paylinks")
    if deps:
        await deps.http.close()
        await deps.redis.aclose()


class WorkerSettings:
    """arq reads these; `run` overrides what the configuration decides."""

    functions: ClassVar[list[Function]] = [
        func(create_checkout_session, name=queue.JOB_FUNCTION),
        func(notify_batch_completed, name=queue.WEBHOOK_FUNCTION),
    ]
    queue_name = layout.QUEUE
    on_startup = startup
    on_shutdown = shutdown
    job_serializer = queue.serialize
    job_deserializer = queue.deserialize
    # The checkout record is the result producers read; arq's copy would only take memory.
    keep_result = 0
    # Short, so a request enqueued at low load starts within about 20 ms; an idle worker
    # pays 50 cheap ZRANGEBYSCOREs a second for it.
    poll_delay = 0.02


ARQ_MAX_RUNS = 1_000_000
# Seconds between a worker losing Redis for good and starting again.
RESTART_DELAY = 1.0


def redis_settings(url: str) -> RedisSettings:
    """arq's connection, retrying through a Redis restart like our own client does."""
    settings = RedisSettings.from_dsn(url)
    settings.retry_on_error = RETRY_ON_ERROR
    settings.retry = restart_retry()
    return settings


def run(config: WorkerConfig, conomy: ConomyConfig, *, burst: bool = False) -> None:
    secrets = [conomy.api_key.get_secret_value()]
    for secret in (conomy.access_token, conomy.client_secret, config.webhook_secret):
        if secret is not None:
            secrets.append(secret.get_secret_value())
    configure(config.log_level, secrets)
    while True:
        try:
            run_worker(
                WorkerSettings,  # type: ignore[arg-type]
                redis_settings=redis_settings(str(config.redis_url)),
                ctx={"config": config, "conomy": conomy},
                max_jobs=config.concurrency,
                job_timeout=config.job_timeout,
                # arq counts every run (a deferral for a slot, a Redis hiccup, a restart after
                # SIGTERM) and drops the job silently past its cap. Our job caps attempts
                # itself and records the failure, so arq's cap is only a last resort.
                max_tries=ARQ_MAX_RUNS,
                burst=burst,
                # On SIGTERM: take no new job, give calls in flight this long, then cancel
                # the rest (a cancelled job is queued again and resends its Idempotency-Key).
                job_completion_wait=config.shutdown_grace,
            )
            return
        except RedisError as e:
            # arq's poll loop ends on a Redis error its retries did not ride out (a WATCH
            # across a restart, or Redis away for longer). Jobs in flight have finished by
            # now; a new worker takes over where the queue stands.
            get_logger().warning("worker.restarted", reason=f"redis: {type(e).__name__}")
            time.sleep(RESTART_DELAY)
