"""Latency at low load: how long a lone request waits from its enqueue to its session.

A paylinks worker runs as it does in production (not in burst mode, concurrency 100, the rate
limiter on and set high, INFO log events to a file); requests are enqueued one at a time at
20 a second, each its own batch of one (the producer sends a chunk only when it is full, so a
trickle is one `enqueue` call per request). A few requests first warm the worker's
connections and scripts and are not counted.

A request's latency is its record's `updated_at` when the worker moved it to `created` less
its `enqueued_at` (both stamped in ms by the same host's clock: jobs/lua/enqueue.lua,
worker/lua/transition.lua), less the sandbox's 20 ms. The sandbox's own log of calls (the
time each arrived, with its Idempotency-Key) splits that into the time to reach the API (the
queue poll, arq's start, the record read, the limiter and the in-flight mark) and the time
after the answer (reading it, and the `created` write).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.data import requests
from bench.services import Services
from bench.throughput import (
    CONCURRENCY,
    LATENCY_MS,
    PAYLINKS,
    RATE_LIMIT,
    ROOT,
    producer,
    quiet_logs,
)
from paylinks.jobs import layout
from paylinks.jobs.connection import connect
from paylinks.jobs.layout import RecordField, State, idempotency_key
from paylinks.jobs.records import read_fields

RATE = 20  # requests a second
WARM_UP = 5
TARGET_P50_MS = 25
# How long the worker may take to start, and the requests to be created, before giving up.
WAIT_S = 30


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(p) - 1]


def start_worker(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as stderr:
        return subprocess.Popen(command, env=env, cwd=ROOT, stderr=stderr)


async def wait_for_worker(services: Services) -> None:
    """Until the worker's first poll (arq writes its own health-check key then)."""
    redis = connect(services.redis_url)
    deadline = time.monotonic() + WAIT_S
    try:
        while not [k async for k in redis.scan_iter(match=layout.WORKER_HEALTH_PATTERN)]:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start polling")
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def trickle(services: Services, bodies: list[dict[str, Any]], rate: float) -> None:
    """Enqueue each body as its own batch, on a fixed schedule of `rate` a second."""
    async with producer(services) as p:
        started = time.monotonic()
        for i, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            report = await p.enqueue([body], batch=f"latency-{body['checkoutToken']}")
            assert report.enqueued == 1, report.as_json()


async def wait_created(services: Services, tokens: list[str]) -> list[dict[str, str]]:
    """Each request's record fields, once every one of them is `created`."""
    redis = connect(services.redis_url)
    fields = [RecordField.STATE, RecordField.ENQUEUED_AT, RecordField.UPDATED_AT]
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            keys = [idempotency_key(token) for token in tokens]
            rows = [row or {} for row in await read_fields(redis, keys, fields)]
            if all(row.get(RecordField.STATE) == State.CREATED for row in rows):
                return rows
            if time.monotonic() > deadline:
                states = [row.get(RecordField.STATE) for row in rows]
                raise RuntimeError(f"not all created after {WAIT_S}s: {states}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def call_times(services: Services) -> dict[str, float]:
    """Idempotency-Key -> when the sandbox received the call (epoch ms)."""
    stats = await services.control("GET", "stats")
    recent = (await services.control("GET", "requests"))["requests"]
    times = stats["call_times"][-len(recent) :] if recent else []
    return {
        r["headers"].get("Idempotency-Key", ""): t * 1000
        for r, t in zip(recent, times, strict=True)
    }


async def measure(services: Services, count: int) -> dict[str, Any]:
    await services.fresh(latency_ms=LATENCY_MS)
    bodies = list(requests(WARM_UP + count, "LAT"))
    env = services.env(PAYLINKS_RATE_LIMIT=RATE_LIMIT)
    command = [*PAYLINKS[:-1], "--concurrency", str(CONCURRENCY)]  # not --burst
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-") as tmp, quiet_logs():
        worker = start_worker(command, env, Path(tmp) / "worker.log")
        try:
            await wait_for_worker(services)
            warm, counted = bodies[:WARM_UP], bodies[WARM_UP:]
            await trickle(services, warm, RATE)
            await wait_created(services, [b["checkoutToken"] for b in warm])
            await trickle(services, counted, RATE)
            tokens = [b["checkoutToken"] for b in counted]
            rows = await wait_created(services, tokens)
            called = await call_times(services)
        finally:
            worker.terminate()
            await asyncio.to_thread(worker.wait, WAIT_S)
    total, to_api, after = [], [], []
    for token, row in zip(tokens, rows, strict=True):
        enqueued, created = int(row[RecordField.ENQUEUED_AT]), int(row[RecordField.UPDATED_AT])
        total.append(created - enqueued - LATENCY_MS)
        call = called.get(idempotency_key(token))
        if call is not None:
            to_api.append(call - enqueued)
            after.append(created - call - LATENCY_MS)
    return {
        "requests": count,
        "rate_per_s": RATE,
        "sandbox_latency_ms": LATENCY_MS,
        "p50_ms": round(percentile(total, 50), 1),
        "p99_ms": round(percentile(total, 99), 1),
        "mean_ms": round(statistics.fmean(total), 1),
        "max_ms": round(max(total), 1),
        "to_api_p50_ms": round(percentile(to_api, 50), 1) if to_api else None,
        "to_api_p99_ms": round(percentile(to_api, 99), 1) if to_api else None,
        "after_answer_p50_ms": round(percentile(after, 50), 1) if after else None,
        "after_answer_p99_ms": round(percentile(after, 99), 1) if after else None,
        "target_p50_ms": TARGET_P50_MS,
    }


async def run(services: Services, quick: bool) -> dict[str, Any]:
    figures = await measure(services, 60 if quick else 200)
    verdict = "met" if figures["p50_ms"] <= TARGET_P50_MS else "MISSED"
    rows = [
        ["enqueue to created, p50", f"{figures['p50_ms']} ms",
         f"less the API's {LATENCY_MS} ms; target <= {TARGET_P50_MS} ms: {verdict}"],
        ["enqueue to created, p99", f"{figures['p99_ms']} ms",
         f"max {figures['max_ms']} ms, {figures['requests']} requests at {RATE}/s"],
        ["enqueue to the API call, p50", f"{figures['to_api_p50_ms']} ms",
         f"p99 {figures['to_api_p99_ms']} ms: queue poll, arq start, record, limiter, mark"],
        ["API answer to created, p50", f"{figures['after_answer_p50_ms']} ms",
         f"p99 {figures['after_answer_p99_ms']} ms: read the answer, write `created`"],
    ]  # fmt: skip
    return {"rows": rows, "figures": figures}
