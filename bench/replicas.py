"""What acknowledging an enqueue only once a replica holds it (PAYLINKS_REDIS_MIN_REPLICAS=1,
WAIT) costs intake, side by side with acknowledging what the primary alone holds.

The bench's Redis gets a replica on loopback. A large file: `paylinks enqueue FILE --json`
with the setting at 0 and at 1, taking turns on an emptied Redis, each one's best round
counting. Small batches: the Python API enqueues batches of 10 in one process, the setting
at 0 and at 1 in turns, and the median time of an enqueue counts. Loopback replication is the
best case: over a network, WAIT adds the round trip to the slowest replica counted, once per
enqueue.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.data import requests, write_jsonl
from bench.intake import Run, emptied, measured
from bench.services import Services
from bench.throughput import quiet_logs
from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.connection import connect
from paylinks.jobs.producer import Producer

SMALL = 10


async def linked(services: Services, within: float = 20) -> None:
    redis = connect(services.redis_url)
    try:
        deadline = time.monotonic() + within
        while (await redis.info("replication")).get("connected_slaves", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's replica did not link up")
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def small_batches(services: Services, count: int) -> dict[int, float]:
    """The median milliseconds of one enqueue of SMALL requests, by MIN_REPLICAS."""
    producers = {
        n: Producer.connect(ProducerConfig(REDIS_URL=services.redis_url, redis_min_replicas=n))
        for n in (0, 1)
    }
    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        with quiet_logs():
            for i in range(count):
                for n, producer in producers.items():
                    batch = list(requests(SMALL, prefix=f"S{n}-{i}"))
                    started = time.perf_counter()
                    await producer.enqueue(batch)
                    times[n].append((time.perf_counter() - started) * 1000)
    finally:
        for producer in producers.values():
            await producer.close()
    return {n: sorted(ms)[len(ms) // 2] for n, ms in times.items()}


def enqueue(services: Services, path: Path, log: Path, replicas: int) -> Run:
    command = [sys.executable, "-m", "paylinks", "enqueue", str(path), "--json"]
    return measured(command, services.env(PAYLINKS_REDIS_MIN_REPLICAS=str(replicas)), log)


async def run(services: Services, quick: bool) -> dict[str, Any]:
    count = 5_000 if quick else 50_000
    rounds = 3
    replica = RedisServer(options=["--replicaof", "127.0.0.1", str(services.redis.port)])
    with replica, tempfile.TemporaryDirectory(prefix="paylinks-bench-replicas-") as folder:
        await linked(services)
        tmp = Path(folder)
        path = write_jsonl(tmp / "requests.jsonl", count, prefix="R")
        best: dict[int, Run] = {}
        for _ in range(rounds):
            for replicas in (0, 1):
                await emptied(services)
                done = await asyncio.to_thread(
                    enqueue, services, path, tmp / f"enqueue-{replicas}.log", replicas
                )
                if done.output["enqueued"] != count:
                    raise RuntimeError(f"enqueued {done.output['enqueued']} of {count}")
                if replicas not in best or done.seconds < best[replicas].seconds:
                    best[replicas] = done
        await emptied(services)
        median_ms = await small_batches(services, 50 if quick else 300)
    alone, confirmed = best[0].rate(count), best[1].rate(count)
    ratio = confirmed / alone
    return {
        "rows": [
            ["file, acknowledged by the primary", f"{alone:,.0f}/s", f"{count:,} requests"],
            ["file, once a replica holds it", f"{confirmed:,.0f}/s", "MIN_REPLICAS=1"],
            ["  its rate over the primary's alone", f"{ratio:.2f}", "best of 3 each"],
            [f"batch of {SMALL}, by the primary", f"{median_ms[0]:.2f} ms", "median enqueue"],
            [f"batch of {SMALL}, once a replica holds it", f"{median_ms[1]:.2f} ms", ""],
        ],
        "figures": {
            "requests": count,
            "primary_alone_per_s": round(alone),
            "replica_confirmed_per_s": round(confirmed),
            "ratio": round(ratio, 3),
            "small_batch_ms": {"primary_alone": median_ms[0], "replica_confirmed": median_ms[1]},
        },
    }
