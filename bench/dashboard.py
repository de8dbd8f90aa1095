"""Dashboard: how long its pages take over a 100,000-request batch and 30 days of history.

Redis is filled directly, in the real layout (records, member lists, batch counters, the batch
index and dead letters), and not timed: one batch of 100,000 requests with 1% of them failed
and a third still queued (so it is running), and a batch every hour for 30 days before it,
50 requests each with one dead letter; and the fleet as its workers leave it (`WORKERS` health
records and registry members, the members of `KILLED` killed ones for the first fleet page to
prune, and one credential's limiter state). A real `paylinks dashboard` process then serves
every page to a real HTTP client, one request at a time, `ROUNDS` times each: the figures are
the median and the slowest. The CSV of the big batch is downloaded whole, and the dashboard's peak
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
from paylinks.jobs.layout import AdaptiveField, BatchField, RecordField, State
from paylinks.jobs.records import result_value

ROOT = Path(__file__).resolve().parent.parent
BIG = "nightly-big"
ROUNDS = 20
HISTORY_REQUESTS = 50
PIPELINE = 2_000
TTL_MS = 30 * 24 * 3600 * 1000
# The fleet: workers alive, and killed ones whose records have expired.
WORKERS = 20
KILLED = 5
# The workers' health-check interval, and the dashboard's: long, so that no record expires
# during the run (the fleet page reads as many records at the end as at the start).
HEALTH_INTERVAL_S = 3600
CREDENTIAL = "bench-credential"
# Then the fleet page again over a Redis this big (about 30 nights of 100,000 requests; with
# --quick, 3), filled up with small keys: what it reads must not grow with the keyspace.
FLEET_KEYS, QUICK_FLEET_KEYS = 3_000_000, 300_000
FILLER = "for i = ARGV[1], ARGV[2] do redis.call('SET', KEYS[1] .. i, 'x') end"


def record(body: dict[str, Any], batch: str, state: State, at: int) -> dict[str, Any]:
    """One record's fields as the producer and the worker leave them (a created one is stored
    as its result)."""
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
            RecordField.REQUEST_DIGEST: "0" * layout.DIGEST_LENGTH,
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
        if state == State.CREATED:
            pipe.set(
                layout.result_key(key), result_value(record(body, batch, state, at)), px=TTL_MS
            )
        else:
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


async def fill_fleet(redis: Any) -> None:
    """Each worker's health record and member (`worker/registry.py`), killed workers' members,
    and a credential paused after a 429 with leases held and calls in the last second."""
    seconds, micros = await redis.time()
    now_us = seconds * 1_000_000 + micros
    # Longer ago than a health record lives (the interval + 1 s): killed ones are prunable.
    started_ms = now_us // 1000 - (HEALTH_INTERVAL_S + 60) * 1000
    pipe = redis.pipeline(transaction=False)
    for i in range(WORKERS + KILLED):
        key = layout.worker_health_key(f"worker-{i // 4}.example.com", 1000 + i)
        pipe.zadd(layout.WORKERS, {key: started_ms})
        if i < WORKERS:
            counts = f"j_complete={i * 1000} j_failed={i} j_retried={i * 3} j_ongoing=5 queued=9"
            pipe.psetex(key, (HEALTH_INTERVAL_S + 1) * 1000, f"Dec-02 10:00:00 {counts}")
    keys = layout.limiter_keys(CREDENTIAL)
    pipe.zadd(layout.CREDENTIALS, {CREDENTIAL: now_us // 1000})
    pipe.set(keys.pause, now_us + 3_600_000_000, px=3_600_000)
    pipe.hset(keys.adaptive, mapping={AdaptiveField.RATE: 25, AdaptiveField.AT: now_us})
    pipe.zadd(keys.leases, {f"lease-{i}": now_us + 3_600_000_000 for i in range(10)})
    pipe.zadd(keys.slots, {f"slot-{i}": now_us - i * 10_000 for i in range(50)})
    await pipe.execute()


async def fill(services: Services, big: int, days: int) -> str:
    redis = connect(services.redis_url)
    await fill_fleet(redis)
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


async def scan_calls(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_dashboard(services: Services) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "paylinks", "dashboard", "--port", str(port)],
        env=services.env(PAYLINKS_HEALTH_CHECK_INTERVAL=str(HEALTH_INTERVAL_S)),
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
        f"fleet ({WORKERS} workers)": "/fleet",
        "live counts (JSON)": f"/api/batches?id={BIG}",
    }
    process, port = start_dashboard(services)
    rows, figures = [], {"requests": big, "history_days": days, "fill_s": round(fill_s, 1)}
    redis = connect(services.redis_url)
    keys = await redis.dbsize()
    scans = await scan_calls(redis)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            # The first fleet page also prunes the killed workers' members.
            first_fleet = await timed(http, "/fleet")
            async with http.get("/fleet") as response:
                page = await response.text()
            assert f'data-field="workers">{WORKERS}<' in page
            assert CREDENTIAL in page
            assert await redis.zcard(layout.WORKERS) == WORKERS
            for what, path in pages.items():
                times = [await timed(http, path) for _ in range(ROUNDS)]
                median, worst = statistics.median(times), max(times)
                figures[what] = {"median_ms": round(median, 1), "max_ms": round(worst, 1)}
                rows.append([what, f"{median:.1f} ms", f"median of {ROUNDS}, max {worst:.1f} ms"])
            rows.append(["fleet, first load", f"{first_fleet:.1f} ms", f"prunes {KILLED} killed"])
            scanned = await scan_calls(redis) - scans
            rows.append(["SCAN calls, every page", str(scanned), f"over {keys:,} keys"])
            figures |= {"fleet first load_ms": round(first_fleet, 1), "scan_calls": scanned}
            figures["keys"] = keys
            started = time.perf_counter()
            async with http.get(f"/batches/{BIG}/results.csv") as response:
                size = sum([len(chunk) async for chunk in response.content.iter_any()])
            csv_s = time.perf_counter() - started
            rss = peak_rss(process.pid)
            big_keys = QUICK_FLEET_KEYS if quick else FLEET_KEYS
            for start in range(keys, big_keys, 100_000):
                last = min(start + 100_000, big_keys) - 1
                await redis.eval(FILLER, 1, f"{layout.PREFIX}:filler:", start, last)
            big_keys = await redis.dbsize()
            scans = await scan_calls(redis)
            times = [await timed(http, "/fleet") for _ in range(ROUNDS)]
            scanned = await scan_calls(redis) - scans
        median, worst = statistics.median(times), max(times)
        what = f"fleet over {big_keys:,} keys"
        rows.append([what, f"{median:.1f} ms", f"max {worst:.1f} ms, {scanned} SCAN calls"])
        figures[what] = {"median_ms": round(median, 1), "max_ms": round(worst, 1)}
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)
        await redis.aclose()
    rows.append(["results CSV, whole batch", f"{csv_s:.2f} s", f"{size / 1e6:.1f} MB streamed"])
    rows.append(["dashboard peak RSS", f"{rss / 1e6:.0f} MB", "after every page and the CSV"])
    figures |= {"csv_s": round(csv_s, 2), "csv_bytes": size, "peak_rss_bytes": rss}
    return {"rows": rows, "figures": figures}
