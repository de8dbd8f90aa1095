"""Whole batches through faults: a worker killed or stopped mid-batch, Redis restarted under the
workers, and an API that fails, throttles and answers too late.

Real processes and real signals only: the workers, the sandbox and redis-server are separate
processes, and every fault is a signal sent to one of them or a fault knob of the sandbox.
Every wait has a deadline, and its failure message shows where the batch stood.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs import layout
from paylinks.jobs.connection import connect
from tests.helpers import (
    Sandbox,
    assert_all_created,
    assert_no_dead_letters,
    batch_status,
    cleaned_up,
    enqueue,
    log_events,
    results,
    run_workers,
    spawn_worker,
    stop_gracefully,
    tail,
    unique_requests,
    wait_for,
    wait_for_exit,
    write_requests,
)


async def test_a_killed_workers_requests_are_taken_up_again_and_created_once(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total, concurrency = 1000, 8
    await sandbox.faults(latency_ms=50)
    report = enqueue(write_requests(tmp_path / "c.jsonl", unique_requests(total, "CRASH")), env)
    assert report["enqueued"] == total
    batch = report["batch"]
    # A killed worker's jobs come back when arq's in-progress marker expires: job timeout
    # + 10 s. The HTTP timeout stays below the job timeout, as in production (15 s < 50 s).
    worker_env = {**env, "PAYLINKS_JOB_TIMEOUT": "3", "PAYLINKS_HTTP_TIMEOUT": "2"}
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    procs = [spawn_worker(worker_env, log, "--concurrency", str(concurrency)) for log in logs]
    workers = list(zip(procs, logs, strict=True))
    with cleaned_up(procs):
        await wait_for(
            redis, batch, lambda s: s["created"] >= total // 3, "a third created", 60, workers
        )
        # Three workers racing for the head of one queue leave each of them idle now and
        # then: to be sure the one we kill dies with calls in flight, the API slows down
        # (1 s, under the HTTP timeout) until every slot of every worker holds a call.
        await sandbox.faults(latency_ms=1000)
        at_kill = await wait_for(
            redis,
            batch,
            lambda s: s["in_progress"] == 3 * concurrency,
            "every worker's slots in flight",
            10,
            workers,
        )
        procs[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[0].wait(10)
        await sandbox.faults(latency_ms=50)
        survivors = workers[1:]
        status = await wait_for(redis, batch, lambda s: s["done"], "batch done", 90, survivors)
        done_after = time.monotonic() - killed_at
        stop_gracefully(survivors, 30)

    assert procs[0].returncode == -signal.SIGKILL
    assert_all_created(status, batch, total)
    rows = results(batch, env)
    assert len(rows) == total
    assert {r["state"] for r in rows} == {"created"}
    assert len({r["sessionId"] for r in rows}) == total
    stats = await sandbox.stats()
    assert stats["sessions"] == total
    assert stats["duplicate_tokens"] == 0
    # No fault at the API, and no call made twice: one 201 per request.
    assert stats["by_status"] == {"201": total}
    assert stats["calls"] == total
    await assert_no_dead_letters(redis, env)

    # The killed worker's requests were resumed: the job marks its record in progress, with
    # the time of the call, before calling, so each of the `concurrency` requests it had in
    # flight when it died was taken up again by a survivor that looked for its session first.
    # It found the session the API had made and posted nothing; or, for a call the kill
    # stopped between its mark and its send (it never reached the API), found none and posted
    # it once, as a second attempt.
    events = log_events(*logs)
    resumed = {e["checkout_token"] for e in events if e.get("event") == "checkout.reconciled"}
    unsent = {e["checkout_token"] for e in events if e.get("event") == "checkout.not_found"}
    assert len(resumed | unsent) == concurrency, (
        f"{len(resumed)} found by a look-up, {len(unsent)} not found; status at the kill: {at_kill}"
    )
    assert len(unsent) < concurrency, "no call the killed worker had in flight reached the API"
    attempts = {r["checkoutToken"]: r["attempts"] for r in rows}
    assert {attempts[token] for token in unsent} <= {2}
    assert {n for token, n in attempts.items() if token not in unsent} == {1}
    # ... and not before arq's in-progress marker (job timeout 3 s + 10 s) expired: no
    # survivor ran a job the killed worker still held.
    assert done_after > 8, f"batch done {done_after:.1f} s after the kill"
    outcomes = Counter(
        e["checkout_token"]
        for e in events
        if e.get("event") in ("checkout.created", "checkout.reconciled")
    )
    assert sorted(outcomes.values()) == [1] * total
    killed_created = {
        e["checkout_token"] for e in log_events(logs[0]) if e.get("event") == "checkout.created"
    }
    assert not resumed & killed_created


async def test_sigterm_lets_calls_in_flight_finish_and_takes_no_new_job(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total, concurrency, grace = 20, 5, 10
    await sandbox.faults(latency_ms=1500)
    report = enqueue(write_requests(tmp_path / "g.jsonl", unique_requests(total, "STOP")), env)
    batch = report["batch"]
    log = tmp_path / "worker.log"
    worker_env = {**env, "PAYLINKS_SHUTDOWN_GRACE": str(grace)}
    worker = spawn_worker(worker_env, log, "--concurrency", str(concurrency))
    with cleaned_up([worker]):
        await wait_for(
            redis,
            batch,
            lambda s: s["in_progress"] == concurrency,
            f"{concurrency} requests in flight",
            30,
            [(worker, log)],
        )
        # In flight at the API, not only marked so in Redis.
        deadline = time.monotonic() + 10
        while (await sandbox.stats())["calls"] < concurrency:
            assert time.monotonic() < deadline, await sandbox.stats()
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            worker.wait(grace + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker still runs {grace + 5} s after SIGTERM:\n{tail(log)}")
        stopped_after = time.monotonic() - signalled

    assert worker.returncode == 0, tail(log)
    # The calls in flight (1.5 s each) ended well within the grace period.
    assert stopped_after < grace, f"stopped {stopped_after:.1f} s after SIGTERM"
    status = await batch_status(redis, batch)
    assert status is not None
    # Every request it had in flight was created; none was left in progress or cancelled,
    # and it took no new job after SIGTERM (a new one would have been created or left over).
    assert status["in_progress"] == 0, status
    assert status["retrying"] == 0, status
    assert status["created"] == concurrency, status
    assert status["queued"] == total - concurrency, status
    assert not status["done"]
    stats = await sandbox.stats()
    assert stats["calls"] == stats["sessions"] == concurrency
    rows = results(batch, env)
    created = [r for r in rows if r["state"] == "created"]
    assert len(created) == concurrency
    assert {r["attempts"] for r in created} == {1}
    assert {(r["state"], r["attempts"]) for r in rows if r not in created} == {("pending", 0)}

    # Another worker finishes the rest.
    run_workers(env, 1, "--concurrency", str(concurrency))
    status = await batch_status(redis, batch)
    assert_all_created(status, batch, total)
    rows = results(batch, env)
    assert {(r["state"], r["attempts"]) for r in rows} == {("created", 1)}
    stats = await sandbox.stats()
    assert stats["sessions"] == stats["calls"] == total
    assert stats["duplicate_tokens"] == 0


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_redis_restart_mid_batch_loses_no_request(
    how: str, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """`stop` is SIGTERM: Redis writes out its append-only file and exits. `kill` is SIGKILL:
    nothing more is written, but Redis writes to the file before it answers (fsync every
    second only matters if the machine itself goes down).

    Either way the workers must ride the restart out by themselves (the README: they retry
    Redis for about 30 s) and finish the batch with one session per request: even a write
    lost with the file's tail would only make a request be sent again under its key.
    """
    total, concurrency = 300, 5
    server = RedisServer(appendonly=True)
    server.start()
    redis = connect(server.url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        renv = {**env, "REDIS_URL": server.url}
        await sandbox.faults(latency_ms=50)
        requests = unique_requests(total, f"RESTART-{how.upper()}")
        report = enqueue(write_requests(tmp_path / "r.jsonl", requests), renv)
        assert report["enqueued"] == total
        batch = report["batch"]
        logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
        procs += [spawn_worker(renv, log, "--concurrency", str(concurrency)) for log in logs]
        workers = list(zip(procs, logs, strict=True))
        with cleaned_up(procs):
            before = await wait_for(
                redis, batch, lambda s: s["created"] >= total // 3, "a third created", 60, workers
            )
            if how == "stop":
                server.stop()
            else:
                server.kill()
            # Away for a second, as a real Redis is while it restarts and loads its file:
            # well within the half minute the clients are meant to retry for.
            await asyncio.sleep(1)
            server.start()
            after = await batch_status(redis, batch)
            assert after is not None, "the batch is gone after the restart"
            if how == "stop":
                # A clean stop writes out everything: what was read before it is still there.
                assert after["created"] >= before["created"], (before, after)
            elif after["created"] < before["created"]:
                # SIGKILL: only what Redis had not yet written to its file can be lost (it
                # writes before it answers; fsync every second matters if the host goes
                # down). Reported, not failed: the end state below must hold even then.
                warnings.warn(
                    f"Redis lost writes to SIGKILL: created {before['created']} before, "
                    f"{after['created']} after",
                    stacklevel=1,
                )
            status = await wait_for(redis, batch, lambda s: s["done"], "batch done", 90, workers)
            stop_gracefully(workers, 30)

        assert_all_created(status, batch, total)
        rows = results(batch, renv)
        assert {r["state"] for r in rows} == {"created"}
        assert len({r["sessionId"] for r in rows}) == total
        stats = await sandbox.stats()
        assert stats["sessions"] == total
        assert stats["duplicate_tokens"] == 0
        await assert_no_dead_letters(redis, renv)
        created_events = Counter(
            e["checkout_token"] for e in log_events(*logs) if e.get("event") == "checkout.created"
        )
        assert max(created_events.values()) == 1
    finally:
        await redis.aclose()
        server.close()


async def test_api_faults_are_retried_until_each_request_is_created_once(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total = 1000
    # 20% answered 500, 10% 429 (Retry-After: 1), and 5% of the sessions created but their
    # answer held back 3 s, past the client's 1 s timeout.
    await sandbox.faults(
        error_rate=0.2, throttle_rate=0.1, retry_after=1, slow_rate=0.05, slow_ms=3000
    )
    report = enqueue(write_requests(tmp_path / "f.jsonl", unique_requests(total, "FAULT")), env)
    batch = report["batch"]
    worker_env = {**env, "PAYLINKS_HTTP_TIMEOUT": "1"}
    # Logs go to files: a worker whose stderr pipe is not read while it runs blocks on a
    # full pipe (64 KiB), freezing its event loop and every job it holds.
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    procs = [spawn_worker(worker_env, log, "--burst", "--concurrency", "50") for log in logs]
    with cleaned_up(procs):
        wait_for_exit(list(zip(procs, logs, strict=True)), 120)

    status = await batch_status(redis, batch)
    assert_all_created(status, batch, total)
    rows = results(batch, env)
    assert {r["state"] for r in rows} == {"created"}
    assert len({r["sessionId"] for r in rows}) == total
    stats = await sandbox.stats()
    assert stats["sessions"] == total
    assert stats["duplicate_tokens"] == 0
    await assert_no_dead_letters(redis, env)

    by_status = Counter({int(code): n for code, n in stats["by_status"].items()})
    assert set(by_status) == {201, 500, 429}
    assert by_status.total() == stats["calls"]
    # One 201 per request: a session whose answer came too late for the client was found in
    # the list by the next attempt, which posted nothing.
    assert by_status[201] == total

    retries = sum(r["attempts"] for r in rows) - total
    assert max(r["attempts"] for r in rows) > 1
    events = log_events(*logs)
    retrying = [e for e in events if e["event"] == "checkout.retrying"]
    reconciled = [e for e in events if e["event"] == "checkout.reconciled"]
    late_answers = len(reconciled)
    assert late_answers > 0
    # Each attempt after a request's first follows one logged retry and is one call; a retry
    # after an answer that never came ends in the look-up instead.
    assert retries == by_status[500] + by_status[429], (retries, dict(by_status))
    assert len(retrying) == retries + late_answers
    reasons = Counter(e["http_status"] or e["reason"] for e in retrying)
    assert reasons == {500: by_status[500], 429: by_status[429], "timeout": late_answers}, (
        reasons,
        dict(by_status),
    )
    assert all(e["retry_in_s"] >= 1 for e in retrying if e["http_status"] == 429)
    created = [e for e in events if e["event"] == "checkout.created"]
    assert len(created) + late_answers == total
    assert len({e["checkout_token"] for e in created + reconciled}) == total


@pytest.mark.parametrize("api", ["ignores the key", "answers 409"])
async def test_dropped_answers_and_a_killed_worker_make_no_extra_session(
    api: str, redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    """Against an API that ignores Idempotency-Key (as the reference documents none) or one
    that answers 409 alreadyExist to a repeated checkoutToken: 5% of the sessions made have
    their answer cut off, and a worker is killed with calls in flight. Every request ends
    with the one session the API holds for its token."""
    total, concurrency = 200, 5
    await sandbox.faults(
        latency_ms=50, drop_rate=0.05, conflict_on_repeated_token=api == "answers 409"
    )
    requests = unique_requests(total, "ONCE-409" if api == "answers 409" else "ONCE-KEY")
    report = enqueue(write_requests(tmp_path / "o.jsonl", requests), env)
    batch = report["batch"]
    worker_env = {**env, "PAYLINKS_JOB_TIMEOUT": "3", "PAYLINKS_HTTP_TIMEOUT": "2"}
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    procs = [spawn_worker(worker_env, log, "--concurrency", str(concurrency)) for log in logs]
    workers = list(zip(procs, logs, strict=True))
    with cleaned_up(procs):
        await wait_for(
            redis, batch, lambda s: s["created"] >= total // 4, "a quarter created", 60, workers
        )
        # Slowed down so that the worker killed holds calls the API is still answering.
        await sandbox.faults(latency_ms=1000)
        await wait_for(
            redis,
            batch,
            lambda s: s["in_progress"] == 2 * concurrency,
            "every slot in flight",
            10,
            workers,
        )
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        await sandbox.faults(latency_ms=50)
        status = await wait_for(redis, batch, lambda s: s["done"], "batch done", 90, workers[1:])
        stop_gracefully(workers[1:], 30)

    assert_all_created(status, batch, total)
    stats = await sandbox.stats()
    held = stats["sessions_per_token"]
    assert sorted(held) == sorted(r["checkoutToken"] for r in requests)
    assert {len(ids) for ids in held.values()} == {1}, {
        t: ids for t, ids in held.items() if len(ids) > 1
    }
    assert stats["sessions"] == total
    assert stats["dropped"] > 0
    rows = results(batch, env)
    assert {r["sessionId"]: r["checkoutToken"] for r in rows} == {
        ids[0]: token for token, ids in held.items()
    }
    await assert_no_dead_letters(redis, env)
    reconciled = [e for e in log_events(*logs) if e.get("event") == "checkout.reconciled"]
    # The dropped answers, and the calls the kill cut off, were each found, not made again.
    assert len(reconciled) >= stats["dropped"]


def test_sigterm_stops_a_worker_whose_redis_is_gone(env: dict[str, str], tmp_path: Path) -> None:
    """An orchestrator drains a worker while Redis is down: the worker must not restart itself
    to wait for Redis, it exits once its closing writes give up (the client's retries, about
    35 s), well inside a pod's grace."""
    with RedisServer() as server:
        log = tmp_path / "worker.log"
        worker = spawn_worker({**env, "REDIS_URL": server.url}, log)
        with cleaned_up([worker]):
            # Running: it has put itself on the fleet's registry.
            with redis.Redis.from_url(server.url) as probe:
                deadline = time.monotonic() + 60
                while not probe.zcard(layout.WORKERS):
                    assert worker.poll() is None, tail(log)
                    assert time.monotonic() < deadline, tail(log)
                    time.sleep(0.1)
            server.kill()  # SIGKILL on the redis-server process
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker without Redis ignored SIGTERM for 60 s:\n{tail(log)}")
    assert worker.returncode == 0, tail(log)
    assert [e["event"] for e in log_events(log)].count("worker.stopped") == 1, tail(log)
