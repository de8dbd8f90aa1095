"""A real worker's /metrics, scraped over HTTP, against the batch it ran and the queue it holds."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from paylinks.jobs.batches import Batches
from tests.helpers import Sandbox, enqueue, unique_requests, write_requests
from tests.monitoring import (  # noqa: F401 - slow_sandbox, a fixture
    Series,
    eventually,
    scrape,
    series,
    slow_sandbox,
    worker_with_port,
)

CREATED, REFUSED = 12, 3


def checkouts(samples: dict[Series, float]) -> dict[Series, float]:
    return {s: v for s, v in samples.items() if s[0] == "paylinks_checkouts_total" and v}


async def test_a_scrape_counts_the_batch_the_worker_ran(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = unique_requests(CREATED + REFUSED, "METRICS")
    for request in requests[CREATED:]:
        request["checkoutToken"] = "REFUSE-" + request["checkoutToken"]
    await sandbox.faults(reject_prefix="REFUSE-")
    with worker_with_port(env, tmp_path / "worker.log") as (_, port):
        batch = enqueue(write_requests(tmp_path / "batch.jsonl", requests), env)["batch"]

        async def done() -> bool | None:
            status = await Batches(redis).status(batch)
            return True if status and status["done"] else None

        await eventually(done, "the batch done")
        samples = await scrape(port)

    assert checkouts(samples) == {
        series("paylinks_checkouts_total", outcome="created", reason="api", status="201"): CREATED,
        series("paylinks_checkouts_total", outcome="failed", reason="api", status="400"): REFUSED,
    }
    assert samples[series("paylinks_api_requests_total", operation="create", status="201")] == (
        CREATED
    )
    assert samples[series("paylinks_api_requests_total", operation="create", status="400")] == (
        REFUSED
    )
    calls = series("paylinks_api_request_duration_seconds_count", operation="create")
    assert samples[calls] == CREATED + REFUSED
    assert samples[series("paylinks_enqueue_to_created_seconds_count")] == CREATED
    assert samples[series("paylinks_ratelimit_wait_seconds_count")] == CREATED + REFUSED
    assert samples[series("paylinks_api_requests_in_flight")] == 0
    # The queue, as Redis holds it once the batch is done: the refused are dead letters.
    assert samples[series("paylinks_redis_up")] == 1
    assert samples[series("paylinks_dead_letters")] == REFUSED
    assert samples[series("paylinks_queue_jobs", state="due")] == 0
    assert samples[series("paylinks_queue_jobs", state="deferred")] == 0
    assert samples[series("paylinks_batches_open")] == 0
    assert samples[series("paylinks_workers")] == 1
    # Bounded labels only: no batch id or checkoutToken reaches a label.
    values = {value for _, labels in samples for _, value in labels}
    assert not {v for v in values if batch in v or "METRICS-" in v}


async def test_a_scrape_counts_retries_failures_and_sessions_found_by_a_look_up(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """Every call answered 500, two tries each: retried, then failed. Then every 201's answer
    dropped: retried for want of an answer, then the session found by the look-up."""
    count = 3
    env = {**env, "PAYLINKS_MAX_TRIES": "2"}
    with worker_with_port(env, tmp_path / "worker.log") as (_, port):
        for name, faults in (("ERRORS", {"error_rate": 1}), ("DROPS", {"drop_rate": 1})):
            await sandbox.faults(**{"error_rate": 0, "drop_rate": 0, **faults})
            path = write_requests(tmp_path / f"{name}.jsonl", unique_requests(count, name))
            batch = enqueue(path, env)["batch"]

            async def done(batch: str = batch) -> bool | None:
                status = await Batches(redis).status(batch)
                return True if status and status["done"] else None

            await eventually(done, f"the {name} batch done")
        samples = await scrape(port)

    assert checkouts(samples) == {
        series("paylinks_checkouts_total", outcome="retried", reason="api", status="500"): count,
        series("paylinks_checkouts_total", outcome="failed", reason="api", status="500"): count,
        series("paylinks_checkouts_total", outcome="retried", reason="connection", status=""): (
            count
        ),
        series("paylinks_checkouts_total", outcome="reconciled", reason="lookup", status=""): (
            count
        ),
    }
    calls = {s: v for s, v in samples.items() if s[0] == "paylinks_api_requests_total" and v}
    assert calls == {
        series("paylinks_api_requests_total", operation="create", status="500"): 2 * count,
        series("paylinks_api_requests_total", operation="create", status="connection"): count,
        series("paylinks_api_requests_total", operation="list", status="200"): count,
    }
    assert samples[series("paylinks_enqueue_to_created_seconds_count")] == count
    assert samples[series("paylinks_dead_letters")] == count


async def test_a_scrape_shows_the_queue_while_calls_are_held(
    redis: Redis,
    slow_sandbox: Sandbox,  # noqa: F811
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {**env, "CONOMY_BASE_URL": slow_sandbox.base_url, "PAYLINKS_HEALTH_CHECK_INTERVAL": "0.2"}
    total, concurrency = 5, 2
    requests = unique_requests(total, "HELD")
    with worker_with_port(env, tmp_path / "worker.log", "--concurrency", str(concurrency)) as (
        _,
        port,
    ):
        enqueue(write_requests(tmp_path / "batch.jsonl", requests), env)

        async def held() -> dict[Series, float] | None:
            samples = await scrape(port)
            running = samples.get(series("paylinks_queue_jobs_in_progress"))
            in_flight = samples[series("paylinks_api_requests_in_flight")]
            return samples if running == concurrency == in_flight else None

        samples = await eventually(held, f"{concurrency} calls in flight")

    assert samples[series("paylinks_queue_jobs", state="due")] == total
    assert samples[series("paylinks_queue_jobs", state="deferred")] == 0
    assert samples[series("paylinks_queue_oldest_due_age_seconds")] > 0
    assert samples[series("paylinks_batches_open")] == 1
    assert samples[series("paylinks_dead_letters")] == 0
    assert not checkouts(samples)
