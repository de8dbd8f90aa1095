"""README promises no other test exercised, each checked so that it fails when the promise is
broken: real worker processes, the sandbox (or a small API of the test's own) over HTTP, and
the test session's Redis."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port
from paylinks.jobs import layout
from paylinks.jobs.layout import checkout_key, idempotency_key
from paylinks.jobs.producer import PIPELINE_SIZE, Producer
from paylinks.jobs.records import read_fields
from paylinks.jobs.scripts import lua
from paylinks.worker.auth import credential_id
from paylinks.worker.config import ConomyConfig
from paylinks.worker.tasks import RESPONSE_KEPT
from tests.helpers import (
    Sandbox,
    dead_letters,
    enqueue,
    events,
    example_requests,
    log_events,
    paylinks,
    results,
    run_workers,
    spawn_worker,
    unique_requests,
    write_requests,
)


def logged(logs: list[str], event: str) -> list[dict[str, Any]]:
    return [e for log in logs for e in events(log) if e["event"] == event]


async def record_of(redis: Redis, token: str) -> dict[str, str]:
    """The request's record, or its result once created, as fields."""
    (fields,) = await read_fields(redis, [idempotency_key(token)])
    return fields or {}


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def api_answering(status: int, body: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A stand-in API that answers every call alike; its base url and the bodies it got."""
    calls: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/checkout-sessions", answer)
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        await runner.cleanup()


async def burst(env: dict[str, str], count: int = 1) -> list[str]:
    """Burst workers, run off this event loop (a stand-in API may be served on it)."""
    return await asyncio.wait_for(asyncio.to_thread(run_workers, env, count), 200)


# --- Failures and dead letters ----------------------------------------------------------------


async def test_a_2xx_that_is_not_a_session_fails_into_a_dead_letter_and_is_not_sent_again(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(1)
    token = requests[0]["checkoutToken"]
    batch = enqueue(write_requests(tmp_path / "one.jsonl", requests), env)["batch"]
    async with api_answering(201, b"<html>created, probably</html>") as (url, calls):
        logs = await burst({**env, "CONOMY_BASE_URL": f"{url}/api"})
    assert len(calls) == 1, "the session exists: asking again could make a second one"
    [row] = results(batch, env)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert row["error"] == "the API answered 201 but not with a readable checkout session"
    [letter] = dead_letters(env)
    assert (letter["checkoutToken"], letter["httpStatus"]) == (token, 201)
    assert letter["response"] == "<html>created, probably</html>"
    assert logged(logs, "checkout.retrying") == []


async def test_a_dead_letter_keeps_the_first_2000_characters_of_the_response(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    assert RESPONSE_KEPT == 2000  # the README's figure
    answer = b'{"detail": "no", "padding": "' + b"x" * 5000 + b'"}'
    batch = enqueue(write_requests(tmp_path / "one.jsonl", example_requests(1)), env)["batch"]
    async with api_answering(400, answer) as (url, _):
        await burst({**env, "CONOMY_BASE_URL": f"{url}/api"})
    [letter] = dead_letters(env, "--batch", batch)
    assert letter["error"] == "no"
    assert letter["response"] == answer[:2000].decode()


async def test_the_last_allowed_attempt_fails_into_a_dead_letter_and_a_retry_starts_from_zero(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(error_rate=1)
    requests = example_requests(2)
    batch = enqueue(write_requests(tmp_path / "two.jsonl", requests), env)["batch"]
    run_workers({**env, "PAYLINKS_MAX_TRIES": "3"}, 1)
    assert (await sandbox.stats())["calls"] == 6, "three attempts each, no more"
    rows = results(batch, env)
    assert {(r["state"], r["attempts"]) for r in rows} == {("failed", 3)}
    assert {r["error"] for r in rows} == {"injected fault (error_rate) (after 3 attempts)"}
    letters = dead_letters(env)
    assert sorted(letter["checkoutToken"] for letter in letters) == sorted(
        r["checkoutToken"] for r in requests
    )
    assert {(letter["attempts"], letter["httpStatus"]) for letter in letters} == {(3, 500)}

    # Retried, the letters get PAYLINKS_MAX_TRIES attempts again, counted from zero.
    retried = paylinks("dead-letters", "retry", "--batch", batch, env=env)
    assert json.loads(retried.stdout) == {"retried": 2, "busy": 0}
    for request in requests:
        assert (await record_of(redis, request["checkoutToken"]))["attempts"] == "0"
    await sandbox.faults(error_rate=0)
    run_workers({**env, "PAYLINKS_MAX_TRIES": "3"}, 1)
    assert {(r["state"], r["attempts"]) for r in results(batch, env)} == {("created", 1)}
    assert dead_letters(env) == []


# --- The CLI's reading commands ---------------------------------------------------------------


async def test_dead_letters_list_and_purge_keep_to_the_batch_named(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="INV-")
    requests = example_requests(3)
    first = write_requests(tmp_path / "a.jsonl", requests[:1])
    second = write_requests(tmp_path / "b.jsonl", requests[1:])
    assert paylinks("enqueue", str(first), "--batch", "a", env=env).returncode == 0
    assert paylinks("enqueue", str(second), "--batch", "b", env=env).returncode == 0
    run_workers(env, 1)
    assert [x["checkoutToken"] for x in dead_letters(env, "--batch", "a")] == [
        requests[0]["checkoutToken"]
    ]
    assert sorted(x["checkoutToken"] for x in dead_letters(env, "--batch", "b")) == sorted(
        r["checkoutToken"] for r in requests[1:]
    )

    purged = paylinks("dead-letters", "purge", "--batch", "b", env=env)
    assert json.loads(purged.stdout) == {"purged": 2}
    assert [x["batch"] for x in dead_letters(env)] == ["a"]
    assert [r["state"] for r in results("b", env)] == ["failed", "failed"]


async def test_batches_prints_a_line_per_batch_without_json(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(5)
    enqueue_into = ("enqueue", str(write_requests(tmp_path / "a.jsonl", requests[:2])))
    assert paylinks(*enqueue_into, "--batch", "older", env=env).returncode == 0
    run_workers(env, 1)
    later = write_requests(tmp_path / "b.jsonl", requests[2:])
    assert paylinks("enqueue", str(later), "--batch", "newer", env=env).returncode == 0
    # The table is for a person at a terminal; a pipe gets JSON lines.
    lines = on_a_terminal(env, "batches").splitlines()
    assert [line.split() for line in lines] == [
        ["newer", "total", "3", "created", "0", "failed", "0", "pending", "3", "running"],
        ["older", "total", "2", "created", "2", "failed", "0", "pending", "0", "done"],
    ]


def on_a_terminal(env: dict[str, str], *args: str) -> str:
    """What `paylinks ARGS` prints with its stdout on a pseudo-terminal."""
    reader, writer = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "paylinks", *args],
            env=env,
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(writer)
        writer = -1
        assert done.returncode == 0, done.stderr.decode()
        out = b""
        while True:
            try:
                data = os.read(reader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and all was read
                break
            if not data:
                break
            out += data
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)
    return out.decode().replace("\r\n", "\n")


async def test_results_o_writes_the_rows_to_the_file_and_nothing_to_stdout(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(3)
    batch = enqueue(write_requests(tmp_path / "three.jsonl", requests), env)["batch"]
    run_workers(env, 1)
    out = tmp_path / "links.jsonl"
    done = paylinks("results", batch, "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == results(batch, env)
    assert [r["checkoutToken"] for r in rows] == [r["checkoutToken"] for r in requests]
    assert {r["state"] for r in rows} == {"created"}


# --- Batches completing -------------------------------------------------------------------------


async def test_a_job_that_finds_its_request_ended_completes_the_batch(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(1)
    batch = enqueue(write_requests(tmp_path / "one.jsonl", requests), env)["batch"]
    key = idempotency_key(requests[0]["checkoutToken"])
    # What a worker killed between the record's last move and the batch's completion leaves:
    # the record created (by the same script the job uses), the batch not completed and the
    # job still on the queue.
    transition = redis.register_script(lua("paylinks.worker", "transition"))
    await transition(
        keys=[
            checkout_key(key),
            layout.batch_key(batch),
            layout.DEAD_LETTERS,
            layout.result_key(key),
        ],
        args=[key, "created", int(time.time() * 1000), "1", "session_id", "cs_before"],
    )
    assert await redis.hget(layout.batch_key(batch), "completed_at") is None  # type: ignore[misc]
    logs = run_workers(env, 1)
    assert (await sandbox.stats())["calls"] == 0
    assert [e["batch"] for e in logged(logs, "batch.completed")] == [batch]
    assert [e["state"] for e in logged(logs, "checkout.skipped")] == ["created"]
    entries = await redis.xrange(layout.COMPLETED_BATCHES)
    assert [(f["batch"], f["created"]) for _, f in entries] == [(batch, "1")]


async def test_a_webhook_that_always_fails_is_given_up_after_max_tries(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    path = write_requests(tmp_path / "two.jsonl", example_requests(2))
    async with api_answering(500, b"down") as (url, deliveries):
        done = paylinks(
            "enqueue", str(path), "--batch", "hooked", "--webhook", f"{url}/hook", env=env
        )
        assert done.returncode == 0, done.stderr.decode()
        worker_env = {**env, "PAYLINKS_MAX_TRIES": "3", "PAYLINKS_WEBHOOK_SECRET": "s"}
        logs = await burst(worker_env)
    assert len(deliveries) == 3
    assert len(logged(logs, "webhook.retrying")) == 2
    [failed] = logged(logs, "webhook.failed")
    assert (failed["batch"], failed["reason"]) == ("hooked", "HTTP 500")
    assert await redis.zcard(layout.QUEUE) == 0


# --- The rate limit in a real worker ------------------------------------------------------------


async def test_a_job_deferred_for_a_slot_does_not_count_an_attempt(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch = enqueue(write_requests(tmp_path / "four.jsonl", example_requests(4)), env)["batch"]
    # Four jobs at once against 2 calls/s and a wait of at most 0.1 s: most must be deferred,
    # and with a single try allowed, a deferral counted as an attempt would fail its request.
    limited = {
        **env,
        "PAYLINKS_RATE_LIMIT": "2",
        "PAYLINKS_RATE_MAX_WAIT": "0.1",
        "PAYLINKS_MAX_TRIES": "1",
    }
    logs = run_workers(limited, 1)
    assert logged(logs, "ratelimit.deferred")
    assert {(r["state"], r["attempts"]) for r in results(batch, env)} == {("created", 1)}
    assert (await sandbox.stats())["calls"] == 4


async def test_adaptive_mode_in_a_worker_halves_the_rate_after_a_429(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    conomy = ConomyConfig(
        base_url=env["CONOMY_BASE_URL"],
        api_key=env["CONOMY_API_KEY"],
        access_token=env["CONOMY_ACCESS_TOKEN"],
    )
    adaptive = layout.limiter_keys(credential_id(conomy)).adaptive
    requests = example_requests(1)
    token = requests[0]["checkoutToken"]
    enqueue(write_requests(tmp_path / "one.jsonl", requests), env)
    await sandbox.faults(throttle_rate=1, retry_after=0)
    log = tmp_path / "worker.log"
    worker_env = {**env, "PAYLINKS_RATE_LIMIT": "20", "PAYLINKS_RATE_ADAPTIVE": "true"}
    worker = spawn_worker(worker_env, log)
    try:

        async def throttled() -> bool:
            return (await record_of(redis, token)).get("http_status") == "429"

        await until(throttled, "the worker saw a 429")
        await sandbox.faults(throttle_rate=0)
        assert float(await redis.hget(adaptive, "rate")) == 10  # type: ignore[misc]

        async def created() -> bool:
            return (await record_of(redis, token)).get("state") == "created"

        await until(created, "the request created once the API stopped throttling")
    finally:
        worker.terminate()
        worker.wait(60)
    assert [e["http_status"] for e in log_events(log) if e["event"] == "checkout.retrying"]


# --- Jobs that run out of time, and workers stopped -------------------------------------------


async def test_a_job_gives_up_before_its_timeout_and_goes_back_on_the_queue(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(1)
    token = requests[0]["checkoutToken"]
    batch = enqueue(write_requests(tmp_path / "one.jsonl", requests), env)["batch"]
    # The API makes the session at once and holds its answer for 30 s; the job's deadline is
    # 1.8 s (2 s less a tenth), long before arq's own timeout of 2 s or the client's of 15 s.
    # (An API that held the call 30 s before making the session would make it after any
    # look-up: `PAYLINKS_RECONCILE_DELAY` is how long a held call may still make one.)
    await sandbox.faults(slow_rate=1, slow_ms=30_000)
    log = tmp_path / "worker.log"
    # The look-up waits until the held call can no longer make a session: the HTTP timeout
    # after it was sent, then the reconcile delay; both short here, for a short test.
    timeouts = {"PAYLINKS_HTTP_TIMEOUT": "3", "PAYLINKS_RECONCILE_DELAY": "1"}
    worker = spawn_worker({**env, "PAYLINKS_JOB_TIMEOUT": "2", **timeouts}, log)
    try:

        async def created() -> bool:
            return (await record_of(redis, token)).get("state") == "created"

        await until(created, "the job, back on the queue, finds the session")
    finally:
        worker.terminate()
        worker.wait(60)
    events = [e["event"] for e in log_events(log)]
    reasons = [e.get("reason") for e in log_events(log) if e["event"] == "checkout.retrying"]
    [row] = results(batch, env)
    # Given up at its own deadline, not by arq's timeout, and run again: the later run found
    # the session the held call made, and posted nothing.
    assert reasons == ["job deadline"], events
    assert "checkout.reconciled" in events, events
    assert (row["state"], row["attempts"]) == ("created", 1)
    stats = await sandbox.stats()
    assert (stats["sessions"], stats["duplicate_tokens"]) == (1, 0)


async def test_sigterm_cancels_calls_past_the_grace_and_they_are_created_once_later(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(3)
    batch = enqueue(write_requests(tmp_path / "three.jsonl", requests), env)["batch"]
    # Sessions made at once, answers held 30 s (see the test above for why not latency).
    await sandbox.faults(slow_rate=1, slow_ms=30_000)
    log = tmp_path / "worker.log"
    # A job timeout well past the test's length, so that only the cancellation at the end of
    # the grace can end these calls.
    stopping_env = {**env, "PAYLINKS_SHUTDOWN_GRACE": "1", "PAYLINKS_JOB_TIMEOUT": "120"}
    worker = spawn_worker(stopping_env, log)
    try:

        async def all_in_flight() -> bool:
            counts = await redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
            return bool(counts.get("in_progress") == "3")

        await until(all_in_flight, "three calls in flight")
        worker.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert await asyncio.to_thread(worker.wait, 60) == 0
        # Well before the calls' 30 s: they were cancelled, not waited for.
        assert time.monotonic() - stopped < 25
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert {r["state"] for r in results(batch, env)} == {"pending"}
    assert await redis.zcard(layout.QUEUE) == 3, "every cancelled job is back on the queue"

    await sandbox.faults(slow_rate=0)
    # The calls were cancelled unanswered: the next run looks each session up before posting,
    # once the call could no longer make one (short timeouts here, for a short test).
    run_workers({**env, "PAYLINKS_HTTP_TIMEOUT": "3", "PAYLINKS_RECONCILE_DELAY": "1"}, 1)
    rows = results(batch, env)
    assert {(r["state"], r["attempts"]) for r in rows} == {("created", 1)}
    stats = await sandbox.stats()
    assert (stats["calls"], stats["sessions"], stats["duplicate_tokens"]) == (3, 3, 0)


async def test_enqueue_wait_waits_for_an_earlier_batchs_copies_of_its_duplicates(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(2)
    path = write_requests(tmp_path / "two.jsonl", requests)
    assert paylinks("enqueue", str(path), "--batch", "earlier", env=env).returncode == 0
    stderr = tmp_path / "wait.err"
    waiting = start_paylinks(env, stderr, "enqueue", str(path), "--batch", "again", "--wait")
    try:

        async def waiting_for_duplicates() -> bool:
            return "waiting for 2 duplicates" in stderr.read_text(errors="replace")

        await until(waiting_for_duplicates, "--wait turns to the duplicates")
        before = await hget_calls(redis)

        async def polled_them() -> bool:
            if waiting.poll() is not None:
                pytest.fail("--wait exited while the earlier copies were still queued")
            return await hget_calls(redis) >= before + 3 * len(requests)

        # It read the earlier copies' states three times, and is still waiting for them.
        await until(polled_them, "--wait reads the duplicates' states")
        assert waiting.poll() is None
        run_workers(env, 1)
        assert await asyncio.to_thread(waiting.wait, 60) == 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert {r["state"] for r in results("earlier", env)} == {"created"}


def start_paylinks(env: dict[str, str], stderr: Path, *args: str) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "paylinks", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def hget_calls(redis: Redis) -> int:
    """HGETs this test session's own Redis has answered, as reading a record's state does."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


async def test_a_batch_completes_only_once_the_producer_sealed_it(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = unique_requests(PIPELINE_SIZE + 10, "SEAL")
    log = tmp_path / "worker.log"
    worker = spawn_worker(env, log)

    async def created(count: int) -> bool:
        counts = await redis.hgetall(layout.batch_key("sealed"))  # type: ignore[misc]
        return int(counts.get("created", 0)) >= count

    async def slow_source() -> AsyncIterator[dict[str, Any]]:
        for request in requests[:PIPELINE_SIZE]:
            yield request
        # The first chunk is written, and worked off, while the producer still reads its input.
        first = functools.partial(created, PIPELINE_SIZE)
        await until(first, "the first chunk created while enqueueing")
        for request in requests[PIPELINE_SIZE:]:
            yield request

    try:
        async with Producer.connect() as producer:
            report = await producer.enqueue(slow_source(), batch="sealed")
        assert report.enqueued == len(requests)
        await until(functools.partial(created, len(requests)), "the whole batch created")
    finally:
        worker.terminate()
        worker.wait(60)
    entries = await redis.xrange(layout.COMPLETED_BATCHES)
    total = str(len(requests))
    assert [(f["batch"], f["total"], f["created"]) for _, f in entries] == [
        ("sealed", total, total)
    ]
    completed = [e for e in log_events(log) if e["event"] == "batch.completed"]
    assert [(e["batch"], e["total"]) for e in completed] == [("sealed", len(requests))]
