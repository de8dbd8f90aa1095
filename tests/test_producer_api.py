"""The Python API (`paylinks.Producer`, `paylinks.SyncProducer`) on a real Redis, with real
worker processes and the sandbox over HTTP; and the README's example run as it is written."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.intake import parse
from paylinks.jobs.producer import Producer, SyncProducer
from tests.helpers import ROOT, Sandbox, example_requests, run_workers, start_worker, stop_worker

# The fields the README documents for a batch's status; a status may carry more.
STATUS_FIELDS = ("batch", "total", "queued", "in_progress", "retrying", "created", "failed", "done")


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Producers here find Redis as the README says: through REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server.url


async def status_reads(redis: Redis) -> int:
    """How many times this test's Redis was asked for a hash whole, as a status read does.
    The Redis is the test session's own, so nothing else counts here."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def burst_workers(env: dict[str, str], count: int = 2) -> list[str]:
    """Burst workers run to the end without blocking this event loop; their logs."""
    workers = [start_worker(env, "--burst") for _ in range(count)]
    try:
        outputs = await asyncio.wait_for(
            asyncio.gather(*(asyncio.to_thread(w.communicate, timeout=60) for w in workers)),
            timeout=70,
        )
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
    logs = [stderr.decode() for _, stderr in outputs]
    assert [w.returncode for w in workers] == [0] * count, logs
    return logs


async def test_producer_enqueues_dicts_waits_and_reads_results(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], redis_url: str
) -> None:
    requests = example_requests(6)
    async with Producer.connect() as producer:
        report = await producer.enqueue(requests, batch="api-list")
        assert (report.batch, report.enqueued, report.duplicates, report.rejected) == (
            "api-list",
            6,
            0,
            [],
        )
        status = await producer.status("api-list")
        assert status is not None
        assert (status["total"], status["queued"], status["done"]) == (6, 6, False)

        # Nothing works the batch yet: `wait` reads its status again and again, and waits on.
        before = await status_reads(redis)
        waiting = asyncio.create_task(producer.wait("api-list", poll_interval=0.05))
        deadline = time.monotonic() + 30
        while await status_reads(redis) < before + 3:
            assert time.monotonic() < deadline, "wait stopped reading the status"
            await asyncio.sleep(0.02)
        assert not waiting.done()

        workers = asyncio.create_task(burst_workers(env, 2))
        async with asyncio.timeout(60):
            final = await waiting
        await workers
        assert {k: final[k] for k in STATUS_FIELDS} == {
            "batch": "api-list",
            "total": 6,
            "queued": 0,
            "in_progress": 0,
            "retrying": 0,
            "created": 6,
            "failed": 0,
            "done": True,
        }
        rows = [row async for row in producer.results("api-list")]
        assert [r["checkoutToken"] for r in rows] == [r["checkoutToken"] for r in requests]
        assert {r["state"] for r in rows} == {"created"}
        assert all(r["sessionId"] and r["url"].startswith("http://127.0.0.1") for r in rows)
        assert all(r["error"] is None and r["attempts"] == 1 for r in rows)

        # The same requests again are duplicates, and add no session.
        again = await producer.enqueue(requests)
        assert (again.enqueued, again.duplicates) == (0, 6)
    assert (await sandbox.stats())["sessions"] == 6


async def test_producer_takes_an_async_iterable_and_reports_invalid_ones_by_position(
    redis: Redis, env: dict[str, str], redis_url: str
) -> None:
    requests = example_requests(4)
    without_owner = {k: v for k, v in requests[1].items() if k != "owner"}
    misspelled = {**requests[3], "checkoutTokn": "x"}
    model = parse(requests[2])

    async def invoices() -> AsyncIterator[dict[str, Any] | Any]:
        yield requests[0]  # 1
        yield without_owner  # 2
        await asyncio.sleep(0)
        yield model  # 3: a CheckoutRequest, not a dict
        yield misspelled  # 4
        yield requests[3]  # 5

    async with Producer.connect() as producer:
        report = await producer.enqueue(invoices(), batch="api-stream")
        assert report.enqueued == 3
        assert [(r.line, r.error) for r in report.rejected] == [
            (2, "owner: Field required"),
            (4, "checkoutTokn: unknown field"),
        ]
        assert report.as_json()["rejected"] == [
            {"line": 2, "error": "owner: Field required"},
            {"line": 4, "error": "checkoutTokn: unknown field"},
        ]
        status = await producer.status("api-stream")
        assert status is not None
        assert (status["total"], status["done"]) == (3, False)
        rows = [row async for row in producer.results("api-stream")]
        assert [r["checkoutToken"] for r in rows] == [
            requests[0]["checkoutToken"],
            requests[2]["checkoutToken"],
            requests[3]["checkoutToken"],
        ]
        assert {r["state"] for r in rows} == {"pending"}

        assert await producer.status("no-such-batch") is None
        with pytest.raises(LookupError):
            async with asyncio.timeout(5):
                await producer.wait("no-such-batch")


def test_sync_producer_from_plain_code(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], redis_url: str
) -> None:
    requests = example_requests(4)
    with SyncProducer() as producer:
        report = producer.enqueue(requests, batch="sync")
        assert (report.enqueued, report.rejected) == (4, [])
        status = producer.status("sync")
        assert status is not None
        assert (status["total"], status["queued"]) == (4, 4)
        # No worker runs: only the caller's timeout can end this wait.
        with pytest.raises(TimeoutError):
            producer.wait("sync", poll_interval=0.05, timeout=0.5)
        assert producer.status("sync") == status

        run_workers(env, 1)

        final = producer.wait("sync", poll_interval=0.05, timeout=30)
        assert (final["created"], final["failed"], final["done"]) == (4, 0, True)
        rows = list(producer.results("sync"))
        assert [r["checkoutToken"] for r in rows] == [r["checkoutToken"] for r in requests]
        assert {r["state"] for r in rows} == {"created"}
        assert all(r["url"] for r in rows)


async def test_sync_producer_from_a_thread_beside_a_running_event_loop(
    redis: Redis, env: dict[str, str], redis_url: str
) -> None:
    requests = example_requests(3)

    def in_thread() -> tuple[int, dict[str, Any] | None]:
        with SyncProducer() as producer:
            report = producer.enqueue(requests, batch="threaded")
            return report.enqueued, producer.status("threaded")

    enqueued, status = await asyncio.wait_for(asyncio.to_thread(in_thread), timeout=30)
    assert enqueued == 3
    assert status is not None
    assert status["total"] == 3


def readme_python_api_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The Python API\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no ```python block after '## The Python API'"
    return found.group(1)


async def test_the_readmes_python_api_example_runs_as_written(
    redis: Redis, sandbox: Sandbox, env: dict[str, str]
) -> None:
    code = readme_python_api_example()
    assert "SyncProducer" in code
    worker = start_worker(env)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
    finally:
        log = stop_worker(worker)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    printed = [
        line.split(" ")
        for line in done.stdout.decode().splitlines()
        if line.startswith("INV-2026-000001 ")
    ]
    assert len(printed) == 1, done.stdout.decode()
    _, state, url = printed[0]
    assert state == "created"
    assert url.startswith(sandbox.base_url.rsplit("/sandbox", 1)[0] + "/")
    assert worker.returncode == 0, log[-2000:]
    completed = [json.loads(line) for line in log.splitlines() if '"batch.completed"' in line]
    assert [(e["batch"], e["created"]) for e in completed] == [("nightly-2026-11-25", 1)]
    assert (await sandbox.stats())["sessions"] == 1


async def test_the_python_api_leaves_the_programs_stdout_alone(
    redis: Redis, env: dict[str, str]
) -> None:
    # "Log events go to stderr as JSON lines, so stdout stays parseable": a program using the
    # API prints its own output on stdout, and the producer's log events must not mix into it.
    code = (
        "import json, sys\n"
        "from paylinks import SyncProducer\n"
        "with SyncProducer() as producer:\n"
        "    report = producer.enqueue([json.loads(sys.stdin.read())], batch='quiet')\n"
        "print('enqueued', report.enqueued)\n"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        input=json.dumps(example_requests(1)[0]).encode(),
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert await redis.exists("paylinks:batch:quiet")
    assert done.stdout.decode() == "enqueued 1\n"


async def test_a_long_input_keeps_its_order_and_its_duplicates_across_chunks(
    redis: Redis, env: dict[str, str]
) -> None:
    # 1,250 requests: three chunks, sent while the next is validated. The last chunk repeats
    # a token of the first (a duplicate) and another with a changed body (a conflict).
    template = example_requests(1)[0]
    requests = [{**template, "checkoutToken": f"LONG-{i:05d}"} for i in range(1_248)]
    requests.append(dict(requests[3]))
    requests.append({**requests[7], "duration": 60})
    async with Producer.connect() as producer:
        report = await producer.enqueue(requests, batch="long")
        assert (report.enqueued, report.duplicates) == (1_248, 1)
        assert [r.line for r in report.rejected] == [1_250]
        members = await redis.lrange("paylinks:batch:long:keys", 0, -1)
        tokens = [row["checkoutToken"] async for row in producer.results("long")]
    assert len(members) == 1_248
    assert tokens == [r["checkoutToken"] for r in requests[:1_248]]
    assert await redis.zcard("paylinks:queue") == 1_248
