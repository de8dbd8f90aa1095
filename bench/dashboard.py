"""Dashboard: how long its pages take over a 100,000-request batch and 30 days of history.

Redis is filled directly, in the real layout (records, member lists, batch counters, the batch
index and dead letters), and not timed: one batch of 100,000 requests with 1% of them failed
and a third still queued (so it is running), and a batch every hour for 30 days before it,
50 requests each with one dead letter. A real `paylinks dashboard` process then serves every
page to a real HTTP client, one request at a time, `ROUNDS` times each: the figures are the
median and the slowest. The CSV of the big batch is downloaded whole, and the dashboard's peak
RSS (VmHWM) afterwards shows that no page held the batch in memory.

`python -m bench --only dashboard` (with `--quick`: 10,000 requests and 3 days).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.data import requests
from bench.services import Services
from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.jobs import layout
from paylinks.jobs.connection import connect
from paylinks.jobs.layout import BatchField, RecordField, State

ROOT = Path(__file__).resolve().parent.parent
BIG = "nightly-big"
ROUNDS = 20
HISTORY_REQUESTS = 50
PIPELINE = 2_000
TTL_MS = 30 * 24 * 3600 * 1000


def record(body: dict[str, Any], batch: str, state: State, at: int) -> dict[str, Any]:
    """One record as the producer and the worker leave it."""
    fields: dict[str, Any] = {
        RecordField.CHECKOUT_TOKEN: body["checkoutToken"],
        RecordField.BATCH: batch,
        RecordField.REQUEST: orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(),
        RecordField.STATE: state,
        RecordField.ATTEMPTS: 0 if state == State.QUEUED else 1,
        RecordField.ENQUEUED_AT: at,
        RecordField.UPDATED_AT: at,
    }
    if state == State.CREATED:
        fields |= {
            RecordField.SESSION_ID: f"cs_{body['checkoutToken']}",
            RecordField.URL: f"https://pay.example.com/{body['checkoutToken']}",
            RecordField.EXPIRES_AT: "2026-12-31T00:00:00Z",
            RecordField.HTTP_STATUS: 201,
        }
    elif state == State.FAILED:
        fields |= {
            RecordField.HTTP_STATUS: 400,
            RecordField.ERROR: "owner.identityId 'idn_x' is not an identity of this account",
            RecordField.RESPONSE: '{"error": {"code": "invalid_request", "message": "..."}}',
        }
    return fields


async def fill_batch(redis: Any, batch: str, count: int, opened: int, running: bool) -> str:
    """A batch of `count` requests: 1% failed (dead letters), a third queued if running.
    Returns one failed request's checkoutToken."""
    counts = dict.fromkeys(State, 0)
    failed_token = ""
    pipe = redis.pipeline(transaction=False)
    for i, body in enumerate(requests(count, prefix=batch)):
        key = layout.idempotency_key(body["checkoutToken"])
        state = State.FAILED if i % 100 == 7 else State.CREATED
        if running and i >= count * 2 // 3:
            state = State.QUEUED
        counts[state] += 1
        at = opened + i
        pipe.hset(layout.checkout_key(key), mapping=record(body, batch, state, at))
        pipe.pexpire(layout.checkout_key(key), TTL_MS)
        pipe.rpush(layout.batch_members_key(batch), key)
        if state == State.FAILED:
            pipe.zadd(layout.DEAD_LETTERS, {key: at})
            failed_token = body["checkoutToken"]
        if len(pipe) >= PIPELINE:
            await pipe.execute()
    status: dict[str, int] = {
        BatchField.TOTAL: count,
        BatchField.SEALED: 1,
        BatchField.CREATED_AT: opened,
        BatchField.RATELIMIT_WAIT_MS: count * 3,
        **counts,
    }
    if not running:
        status[BatchField.COMPLETED_AT] = opened + count
    pipe.hset(layout.batch_key(batch), mapping=status)
    pipe.zadd(layout.BATCHES, {batch: opened})
    await pipe.execute()
    return failed_token


async def fill(services: Services, big: int, days: int) -> str:
    redis = connect(services.redis_url)
    now = int(time.time() * 1000)
    hour = 3600 * 1000
    for h in range(days * 24, 0, -1):
        await fill_batch(redis, f"hourly-{h:04d}", HISTORY_REQUESTS, now - h * hour, False)
    token = await fill_batch(redis, BIG, big, now - 60_000, True)
    await redis.aclose()
    return token


async def timed(http: aiohttp.ClientSession, path: str) -> float:
    started = time.perf_counter()
    async with http.get(path) as response:
        await response.read()
        assert response.status == 200, (path, response.status)
    return (time.perf_counter() - started) * 1000


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_dashboard(services: Services) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "paylinks", "dashboard", "--port", str(port)],
        env=services.env(),
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_for_port(port)
    return process, port


async def run(services: Services, quick: bool) -> dict[str, Any]:
    await services.fresh()
    big, days = (10_000, 3) if quick else (100_000, 30)
    started = time.monotonic()
    token = await fill(services, big, days)
    fill_s = time.monotonic() - started
    key = layout.idempotency_key(token)
    pages = {
        "batches (newest 50)": "/",
        "batches, page 10": "/?page=10",
        f"batch of {big:,} (first page)": f"/batches/{BIG}",
        "batch, last page of requests": f"/batches/{BIG}?page={big // 100 - 1}",
        "batch, search by checkoutToken": f"/batches/{BIG}?token={token}",
        "a request": f"/requests/{key}",
        "dead letters": "/dead-letters",
        "dead letters of the batch": f"/dead-letters?batch={BIG}",
        "fleet": "/fleet",
        "live counts (JSON)": f"/api/batches?id={BIG}",
    }
    process, port = start_dashboard(services)
    rows, figures = [], {"requests": big, "history_days": days, "fill_s": round(fill_s, 1)}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            # The first fleet page walks the keyspace for rate-limit credentials.
            first_fleet = await timed(http, "/fleet")
            for what, path in pages.items():
                times = [await timed(http, path) for _ in range(ROUNDS)]
                median, worst = statistics.median(times), max(times)
                figures[what] = {"median_ms": round(median, 1), "max_ms": round(worst, 1)}
                rows.append([what, f"{median:.1f} ms", f"median of {ROUNDS}, max {worst:.1f} ms"])
            rows.append(["fleet, first load", f"{first_fleet:.1f} ms", "SCAN for credentials"])
            figures["fleet first load_ms"] = round(first_fleet, 1)
            started = time.perf_counter()
            async with http.get(f"/batches/{BIG}/results.csv") as response:
                size = sum([len(chunk) async for chunk in response.content.iter_any()])
            csv_s = time.perf_counter() - started
        rss = peak_rss(process.pid)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)
    rows.append(["results CSV, whole batch", f"{csv_s:.2f} s", f"{size / 1e6:.1f} MB streamed"])
    rows.append(["dashboard peak RSS", f"{rss / 1e6:.0f} MB", "after every page and the CSV"])
    figures |= {"csv_s": round(csv_s, 2), "csv_bytes": size, "peak_rss_bytes": rss}
    return {"rows": rows, "figures": figures}
