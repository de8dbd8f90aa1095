"""A Sentinel group whose primary is killed in the middle of a batch: the workers follow the
sentinels to the promoted replica, finish the batch with one session per request, and every
request an enqueue acknowledged (PAYLINKS_REDIS_MIN_REPLICAS=1) is there and created.

Real processes and real signals: a primary, a replica and three sentinels on loopback, the
sandbox, the workers and each `paylinks enqueue` are separate processes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from paylinks.devtools.redis_sentinel import SentinelGroup
from paylinks.jobs.config import RedisConfig
from paylinks.jobs.connection import connect
from tests.helpers import (
    Sandbox,
    assert_all_created,
    assert_no_dead_letters,
    cleaned_up,
    enqueue,
    paylinks,
    results,
    spawn_worker,
    stop_gracefully,
    unique_requests,
    wait_for,
)
from tests.helpers import write_requests as write

# Sentinels elect a new primary within timeouts of their own: run alone (see the Makefile).
pytestmark = pytest.mark.serial

PASSWORD = "group-Pa55word"
SENTINEL_PASSWORD = "sentinel-Pa55word"
MASTER = "paylinks-primary"
SMALL = 10


@dataclass
class Enqueuer:
    """`paylinks enqueue` of small batches, one after another, until stopped: the batches it
    acknowledged (exit code 0) and the refusals it printed."""

    env: dict[str, str]
    folder: Path
    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            path = write(self.folder / f"small-{n}.jsonl", unique_requests(SMALL, f"SMALL{n:03d}"))
            done = paylinks("enqueue", str(path), "--json", env=self.env, timeout=90)
            if done.returncode == 0:
                self.acknowledged.append(json.loads(done.stdout)["batch"])
            else:
                self.refused.append(done.stderr.decode().strip())


@contextmanager
def enqueuing(enqueuer: Enqueuer) -> Iterator[None]:
    thread = threading.Thread(target=enqueuer.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        enqueuer.stop.set()
        thread.join(120)


@pytest.mark.timeout(240)
async def test_a_primary_killed_mid_batch_loses_no_acknowledged_request(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total, concurrency = 300, 5
    group = SentinelGroup(master=MASTER, password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    with group:
        settings = {
            # With sentinels, the URL's host is not used: the sentinels name the primary.
            "REDIS_URL": f"redis://:{PASSWORD}@{MASTER}/0",
            "PAYLINKS_REDIS_SENTINELS": group.sentinel_addresses,
            "PAYLINKS_REDIS_SENTINEL_MASTER": MASTER,
            "PAYLINKS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            "PAYLINKS_REDIS_MIN_REPLICAS": "1",
            "PAYLINKS_REDIS_REPLICAS_TIMEOUT": "1",
        }
        renv = {**env, **settings}
        redis = connect(
            RedisConfig(
                REDIS_URL=settings["REDIS_URL"],
                redis_sentinels=group.sentinel_addresses,
                redis_sentinel_master=MASTER,
                redis_sentinel_password=SENTINEL_PASSWORD,
            )
        )
        wrong = {**renv, "PAYLINKS_REDIS_SENTINEL_PASSWORD": "Wrong-sentinel-Pa55word"}
        refused = paylinks("batches", env=wrong, timeout=60)
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.decode()
        assert line.count("\n") == 1, line
        assert line.startswith(f"paylinks: cannot reach Redis at primary {MASTER!r} via sentinels")
        assert "Wrong-sentinel-Pa55word" not in line
        await sandbox.faults(latency_ms=100)
        report = enqueue(write(tmp_path / "big.jsonl", unique_requests(total, "FAILOVER")), renv)
        assert report["enqueued"] == total
        batch = report["batch"]
        logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
        procs = [spawn_worker(renv, log, "--concurrency", str(concurrency)) for log in logs]
        workers = list(zip(procs, logs, strict=True))
        enqueuer = Enqueuer(renv, tmp_path)
        try:
            with cleaned_up(procs):
                with enqueuing(enqueuer):
                    await wait_for(
                        redis, batch, lambda s: s["created"] >= total // 3, "a third", 60, workers
                    )
                    deadline = time.monotonic() + 30
                    while not enqueuer.acknowledged:
                        assert time.monotonic() < deadline, enqueuer.refused
                        await asyncio.sleep(0.05)
                    old = group.primary_port()
                    acknowledged_before = len(enqueuer.acknowledged)
                    at_kill = await wait_for(redis, batch, lambda s: True, "status", 5)
                    group.primary.kill()
                    new = group.wait_for_failover(old, 30)
                    status = await wait_for(
                        redis, batch, lambda s: s["done"], "batch done", 60, workers
                    )
                    enqueuer.stop.set()
                for small in enqueuer.acknowledged:
                    await wait_for(redis, small, lambda s: s["done"], f"{small} done", 30, workers)
                stop_gracefully(workers, 30)
                await assert_no_dead_letters(redis, renv)
        finally:
            await redis.aclose()

        # The primary was killed with the batch under way, and a replica took its place.
        assert 0 < at_kill["created"] < total, at_kill
        assert new == group.replicas[0].port != old
        assert_all_created(status, batch, total)
        rows = results(batch, renv)
        assert {r["state"] for r in rows} == {"created"}
        assert len({r["sessionId"] for r in rows}) == total
        # Every batch an enqueue acknowledged, before the kill or after, is there, created.
        assert len(enqueuer.acknowledged) >= acknowledged_before >= 1
        for small in enqueuer.acknowledged:
            rows = results(small, renv)
            assert [r["state"] for r in rows] == ["created"] * SMALL, small
        # An enqueue refused, for the primary it found gone or for the new primary having no
        # replica to confirm it, said so in one line.
        refusals = ("paylinks: 0 of 1 replicas", "paylinks: cannot reach Redis at primary")
        for refusal in enqueuer.refused:
            assert refusal.startswith(refusals), refusal
            assert "\n" not in refusal
            assert PASSWORD not in refusal
            assert SENTINEL_PASSWORD not in refusal
        stats = await sandbox.stats()
        assert stats["duplicate_tokens"] == 0
        for log in logs:
            text = log.read_text()
            assert PASSWORD not in text
            assert SENTINEL_PASSWORD not in text
