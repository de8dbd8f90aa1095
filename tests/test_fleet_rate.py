"""The fleet's rate limit seen from the API's side: real worker processes, the sandbox over HTTP,
the tests' private Redis, and what the sandbox received, when.

- Four workers of very different concurrency keep, together, to one rate.
- A 429 answered to one worker holds every worker back for its Retry-After.
- A killed worker's in-flight leases come back, and the cap holds meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers import Sandbox, log_events, paylinks, spawn_worker, tail, unique_requests

# Counts calls per second: run alone, not beside other tests' workers (see the Makefile).
pytestmark = pytest.mark.serial


def enqueue(requests: list[dict[str, Any]], env: dict[str, str], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    done = paylinks("enqueue", str(path), "--json", env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert (report["enqueued"], report["rejected"]) == (len(requests), [])
    batch: str = report["batch"]
    return batch


def status(batch: str, env: dict[str, str]) -> dict[str, Any]:
    done = paylinks("status", batch, "--json", env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@contextmanager
def killed_afterwards(workers: list[tuple[subprocess.Popen[bytes], Path]]) -> Iterator[None]:
    """Whatever happens in the test, no worker it started (or adds to `workers` meanwhile)
    outlives it."""
    try:
        yield
    finally:
        for worker, _ in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)


async def wait_exit(workers: list[tuple[subprocess.Popen[bytes], Path]], within: float) -> None:
    """Every (burst) worker exits 0 within `within` seconds."""
    deadline = time.monotonic() + within
    while any(worker.poll() is None for worker, _ in workers):
        if time.monotonic() > deadline:
            running = [str(log.name) for worker, log in workers if worker.poll() is None]
            pytest.fail(f"workers still running after {within:.0f} s: {running}")
        await asyncio.sleep(0.1)
    for worker, log in workers:
        assert worker.returncode == 0, tail(log)


def max_one_second_window(times: list[float]) -> tuple[int, int]:
    """The most calls in any [t, t + 1 s], both ends included, that starts at a call, and the
    index of that call in the sorted times."""
    times = sorted(times)
    return max((bisect_right(times, t + 1.0) - i, i) for i, t in enumerate(times))


def gaps_ms(times: list[float], start: int) -> list[float]:
    """The gaps between the calls of the one-second window that starts at `times[start]`:
    calls stamped a few hundredths of a millisecond apart came in a bunch."""
    inside = times[start : bisect_right(times, times[start] + 1.0)]
    return [round((b - a) * 1000, 1) for a, b in pairwise(inside)]


def max_in_flight(times: list[float], seconds: float) -> int:
    """The most calls the sandbox held at once, each held `seconds` from its arrival."""
    times = sorted(times)
    return max(i - bisect_left(times, t - seconds, hi=i) + 1 for i, t in enumerate(times))


def unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def start_of(event: dict[str, Any]) -> float:
    """When the call an answer's log event reports left the worker, by the worker's clock."""
    return unix(event["timestamp"]) - event["duration_ms"] / 1000


@pytest.mark.parametrize(("total", "rate", "burst"), [(1500, 50, 5), (400, 20, 2)])
async def test_four_workers_of_any_concurrency_keep_together_to_one_rate(
    redis: Redis,
    sandbox: Sandbox,
    env: dict[str, str],
    tmp_path: Path,
    total: int,
    rate: int,
    burst: int,
) -> None:
    await sandbox.faults(latency_ms=20)
    batch = enqueue(unique_requests(total, "RATE"), env, tmp_path / "requests.jsonl")
    fleet = {**env, "PAYLINKS_RATE_LIMIT": str(rate), "PAYLINKS_RATE_BURST": str(burst)}
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    with killed_afterwards(workers):
        for concurrency in (5, 20, 50, 100):
            log = tmp_path / f"worker-{concurrency}.log"
            workers.append(
                (spawn_worker(fleet, log, "--burst", "--concurrency", f"{concurrency}"), log)
            )
        # The calls take total / rate seconds (30 s for 1,500 at 50/s); a fleet that ignores the
        # limit is done much sooner.
        await wait_exit(workers, within=2 * total / rate + 10)

    stats = await sandbox.stats()
    times = sorted(stats["call_times"])
    window, at = max_one_second_window(times)
    mean = (len(times) - 1) / (times[-1] - times[0])
    events = log_events(*(log for _, log in workers))
    # When each call left its worker, by the worker's own clock: the answer's log time less
    # the call's duration. Not what is asserted (the sandbox's times are), but what tells a
    # sender that sent too much from a sandbox that stamped late what it was sent in time.
    sent = [start_of(e) for e in events if e["event"] == "checkout.created"]
    # The sandbox's own stalls around that second: calls held in them are stamped together.
    stalls = [
        (round(when - times[at], 3), late)
        for when, late in stats["stalls"]
        if times[at] - 1 <= when <= times[at] + 2
    ]
    print(
        f"\n[fleet rate] {len(times)} calls over {times[-1] - times[0]:.2f} s: "
        f"max one-second window {window} (limit {rate} + burst {burst}), "
        f"mean rate {mean:.2f}/s (limit {rate}/s); "
        f"by the workers' send times: max one-second window {max_one_second_window(sent)[0]}; "
        f"the sandbox's longest stall {max((late for _, late in stats['stalls']), default=0)} s"
    )
    # What the API would count: `burst` calls at once, then one every 1/rate s, so no second
    # may hold more than rate + burst. No allowance for jitter here: the limiter keeps room for
    # calls that reach the API late (PAYLINKS_RATE_JITTER), so a delayed call still fits.
    assert window <= rate + burst, (
        f"{window} calls in the second from {times[at] - times[0]:.3f} s into the run; "
        f"gaps (ms) between them: {gaps_ms(times, at)}; "
        f"by the workers' send times: {max_one_second_window(sent)[0]}; "
        f"the sandbox's stalls (s after the second's first call, s late): {stalls}"
    )
    assert mean >= 0.97 * rate, f"mean rate {mean:.2f}/s"

    # No fault was injected: one call per request, one session per token.
    assert (stats["sessions"], stats["calls"], stats["duplicate_tokens"]) == (total, total, 0)
    final = status(batch, env)
    assert (final["created"], final["failed"], final["done"]) == (total, 0, True)
    assert final["ratelimit_wait_s"] > 0
    waited = [e for e in events if e["event"] == "ratelimit.waited"]
    assert waited, "no ratelimit.waited event in any worker's log"
    assert all(isinstance(e["waited_ms"], int) and e["waited_ms"] >= 0 for e in waited)
    # The wait logged and the wait counted on the batch are the same waits.
    assert abs(sum(e["waited_ms"] for e in waited) / 1000 - final["ratelimit_wait_s"]) < 0.01
    # Several processes shared the calls, so the rate held across processes, not within one.
    # Not all four need to: a small worker reads only the head of the queue (arq's read
    # limit), which the big workers' jobs, waiting for their slots, may fill the whole time.
    per_worker = [
        sum(e["event"] == "checkout.created" for e in log_events(log)) for _, log in workers
    ]
    print(f"[fleet rate] created per worker (concurrency 5, 20, 50, 100): {per_worker}")
    assert sum(per_worker) == total
    assert sum(1 for n in per_worker if n) >= 2, per_worker


# Tolerance for calls already in flight when the pause was set: a job that got its slot just
# before the 429 came back still marks its record in progress (one Redis round trip) and posts,
# which takes a few milliseconds; 100 ms covers that and a busy event loop. A call the sandbox
# receives later than this after the 429 was logged was sent on a permission the pause had
# already withdrawn.
IN_FLIGHT_SLACK = 0.1
# Time sources: the log's wall clock, the sandbox's and Redis's, all on this host; asyncio may
# wake a sleeper up to a clock tick early.
CLOCK_SLACK = 0.02


async def test_a_429_to_one_worker_holds_every_worker_for_its_retry_after(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total, retry_after = 200, 1
    await sandbox.faults(latency_ms=20, throttle_rate=0.05, retry_after=retry_after)
    batch = enqueue(unique_requests(total, "PAUSE"), env, tmp_path / "requests.jsonl")
    # No rate of our own: only the pause after a 429 holds the workers back.
    fleet = {**env, "PAYLINKS_RATE_LIMIT": "0"}
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    with killed_afterwards(workers):
        for n in range(3):
            log = tmp_path / f"worker-{n}.log"
            workers.append((spawn_worker(fleet, log, "--burst", "--concurrency", "20"), log))
        await wait_exit(workers, within=40)

    stats = await sandbox.stats()
    times = sorted(stats["call_times"])
    events = {log.name: log_events(log) for _, log in workers}
    throttled = sorted(
        (
            e
            for found in events.values()
            for e in found
            if e["event"] == "checkout.retrying" and e.get("http_status") == 429
        ),
        key=lambda e: unix(e["timestamp"]),
    )
    assert stats["by_status"].get("429", 0) >= 1, "no 429 drawn: nothing was tested"
    assert len(throttled) == stats["by_status"]["429"]

    # The pause starts when a worker has the 429 in hand, which is before it logs it (`logged`)
    # and after it sent the call (`logged - duration`), and lasts Retry-After. So no call may
    # arrive in (logged + slack, logged - duration + Retry-After).
    report = []
    for n, event in enumerate(throttled):
        logged = unix(event["timestamp"])
        start = logged + IN_FLIGHT_SLACK
        end = logged - event["duration_ms"] / 1000 + retry_after - CLOCK_SLACK
        inside = [t for t in times if start < t < end]
        if n == 0:
            before = sum(1 for t in times if logged - 1 <= t < logged)
            print(
                f"\n[429 pause] first 429 logged at {logged:.3f}, {len(throttled)} 429s in all; "
                f"calls in the second before it: {before}; calls in "
                f"({start - logged:+.3f} s, {end - logged:+.3f} s) after it: {len(inside)}; "
                f"next call {min((t for t in times if t > logged), default=0) - logged:+.3f} s"
            )
        if inside:
            # Which worker sent what, by its own clock (the answer's log time less the call's
            # duration): tells a call sent late on an old slot from one sent in the pause.
            senders = [
                f"{name} {e['checkout_token']} sent {start_of(e) - logged:+.3f} s"
                for name, found in events.items()
                for e in found
                if "duration_ms" in e and logged < start_of(e) < end
            ]
            report.append(
                f"429 logged at {logged:.3f} ({event['checkout_token']}): "
                f"{len(inside)} calls at {[round(t - logged, 3) for t in inside]} s after it; "
                f"calls the workers started after it: {senders}"
            )
    assert report == [], "\n".join(report)
    # Calls went on after the first pause: it held workers that still had work, not a fleet
    # that had already finished.
    first = unix(throttled[0]["timestamp"])
    assert any(t > first + retry_after for t in times)

    final = status(batch, env)
    assert (final["created"], final["failed"], final["done"]) == (total, 0, True)
    assert (stats["sessions"], stats["duplicate_tokens"]) == (total, 0)


async def test_a_killed_workers_leases_come_back_and_the_cap_holds_meanwhile(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    total, cap, latency = 10, 5, 2.0
    await sandbox.faults(latency_ms=latency * 1000)
    batch = enqueue(unique_requests(total, "LEASE"), env, tmp_path / "requests.jsonl")
    capped = {
        **env,
        "PAYLINKS_MAX_IN_FLIGHT": str(cap),
        # A lease lasts rate_max_wait + http_timeout + 5 = 10 s; arq takes a dead worker's
        # jobs up again job_timeout + 10 = 13 s after they started.
        "PAYLINKS_RATE_MAX_WAIT": "2",
        "PAYLINKS_HTTP_TIMEOUT": "3",
        "PAYLINKS_JOB_TIMEOUT": "3",
    }
    lease_seconds = 2 + 3 + 5
    first_log, second_log = tmp_path / "killed.log", tmp_path / "second.log"
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    with killed_afterwards(processes):
        first = spawn_worker(capped, first_log, "--concurrency", f"{cap}")
        processes.append((first, first_log))
        deadline = time.monotonic() + 15
        while (await sandbox.stats())["calls"] < cap:
            assert first.poll() is None, tail(first_log)
            assert time.monotonic() < deadline, f"{cap} calls never in flight:\n{tail(first_log)}"
            await asyncio.sleep(0.02)
        # Every call it made is still waiting on the sandbox's 2 s latency: it dies holding
        # `cap` leases and `cap` jobs.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.time()
        calls_then = (await sandbox.stats())["call_times"]
        assert len(calls_then) == cap
        assert killed_at - max(calls_then) < latency, "the calls were no longer in flight"

        second = spawn_worker(capped, second_log, "--burst", "--concurrency", f"{cap}")
        processes.append((second, second_log))
        await wait_exit([(second, second_log)], within=40)

    stats = await sandbox.stats()
    times = sorted(stats["call_times"])
    most = max_in_flight(times, latency)
    resumed = times[cap] - times[cap - 1]
    print(
        f"\n[dead leases] {len(times)} calls; most in flight at once {most}; first call after "
        f"the kill {times[cap] - killed_at:.2f} s after it, {resumed:.2f} s after the dead "
        f"worker's last call (lease {lease_seconds} s)"
    )
    assert most <= cap, f"{most} calls in flight at once"
    # The dead worker's leases held the cap until they expired, then came back promptly.
    assert times[cap] >= times[0] + lease_seconds - 0.5, [round(t - times[0], 2) for t in times]
    assert times[cap] <= times[cap - 1] + lease_seconds + 3, [round(t - times[0], 2) for t in times]
    assert any(e["event"] == "ratelimit.deferred" for e in log_events(second_log))

    final = status(batch, env)
    assert (final["created"], final["failed"], final["done"]) == (total, 0, True)
    assert (stats["sessions"], stats["duplicate_tokens"]) == (total, 0)
