"""The fleet-wide rate limit on real Redis, with acquirers in this process and in others."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from bisect import bisect_left, bisect_right
from typing import Any

import pytest
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.worker.ratelimit import Limiter, RateLimit, RateLimited
from tests.helpers import ROOT

CREDENTIAL = "test-credential"
LEASES = f"paylinks:ratelimit:{CREDENTIAL}:leases"

# Acquires slots in several tasks for a while, from the moment it reads a line on stdin, and
# prints when each slot was entered.
ACQUIRER = """
import asyncio, json, sys, time
from paylinks.jobs.connection import connect
from paylinks.worker.ratelimit import Limiter, RateLimit

async def main(url, credential, limit, tasks, seconds):
    redis = connect(url)
    limiter = Limiter(redis, credential, RateLimit(**json.loads(limit)))
    stamps = []

    async def acquire(end):
        while time.time() < end:
            async with limiter.slot(max_wait=10):
                stamps.append(time.time())

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    end = time.time() + seconds
    await asyncio.gather(*(acquire(end) for _ in range(tasks)))
    print(json.dumps(stamps), flush=True)
    await redis.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
"""

# Takes a slot and never gives it back: it is killed holding it.
HOLDER = """
import asyncio, json, sys
from paylinks.jobs.connection import connect
from paylinks.worker.ratelimit import Limiter, RateLimit

async def main(url, credential, limit):
    limiter = Limiter(connect(url), credential, RateLimit(**json.loads(limit)))
    async with limiter.slot(max_wait=5):
        print("held", flush=True)
        await asyncio.sleep(600)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


async def python(snippet: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        snippet,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def acquire_for(limiter: Limiter, seconds: float, tasks: int) -> list[float]:
    stamps: list[float] = []
    end = time.time() + seconds

    async def acquire() -> None:
        while time.time() < end:
            async with limiter.slot(max_wait=10):
                stamps.append(time.time())

    await asyncio.gather(*(acquire() for _ in range(tasks)))
    return stamps


def busiest_second(stamps: list[float]) -> int:
    stamps = sorted(stamps)
    return max(bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps))


def mean_rate(stamps: list[float], burst: int) -> float:
    # The burst goes at once; after it, slots come at the rate.
    return (len(stamps) - burst) / (max(stamps) - min(stamps))


RATE, BURST = 50, 5


async def test_concurrent_acquirers_in_one_process_keep_to_the_rate(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST))
    stamps = await acquire_for(limiter, 1.5, tasks=20)
    print(f"one process: busiest second {busiest_second(stamps)}, mean rate", end=" ")
    print(f"{mean_rate(stamps, BURST):.1f}/s over {len(stamps)} slots")
    assert busiest_second(stamps) <= RATE + BURST
    assert mean_rate(stamps, BURST) >= 0.9 * RATE


async def test_acquirers_in_several_processes_share_one_rate(
    redis: Redis, redis_server: RedisServer
) -> None:
    limit = json.dumps({"rate": RATE, "burst": BURST})
    processes = [
        await python(ACQUIRER, redis_server.url, CREDENTIAL, limit, "8", "1.5") for _ in range(3)
    ]
    for process in processes:
        assert process.stdout
        assert await asyncio.wait_for(process.stdout.readline(), 60) == b"ready\n"
    for process in processes:
        assert process.stdin
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST))
    here = await acquire_for(limiter, 1.5, tasks=8)
    elsewhere = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
    per_process = [json.loads(out) for out, _ in elsewhere]
    stamps = here + [stamp for stamps in per_process for stamp in stamps]
    print(f"four processes: busiest second {busiest_second(stamps)}, mean rate", end=" ")
    print(f"{mean_rate(stamps, BURST):.1f}/s over {len(stamps)} slots")
    assert all(per_process), "every process got slots"
    assert busiest_second(stamps) <= RATE + BURST
    assert mean_rate(stamps, BURST) >= 0.9 * RATE


async def test_no_more_calls_in_flight_than_the_cap(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0, max_in_flight=3))
    held = peak = 0

    async def call() -> None:
        nonlocal held, peak
        async with limiter.slot(max_wait=10):
            held += 1
            peak = max(peak, held)
            await asyncio.sleep(0.05)
            held -= 1

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3
    assert await redis.zcard(LEASES) == 0


async def test_a_released_lease_wakes_a_waiter_without_polling(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0, max_in_flight=1))
    entered = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(max_wait=0):
            entered.set()
            await asyncio.sleep(0.3)

    holder = asyncio.create_task(hold())
    await entered.wait()
    async with limiter.slot(max_wait=5) as waited:
        pass
    await holder
    # Before the lease poll would have asked again.
    assert 0.2 <= waited < 0.8


async def test_a_cancelled_holder_gives_its_lease_back(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0, max_in_flight=1))
    entered = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(max_wait=0):
            entered.set()
            await asyncio.sleep(600)

    holder = asyncio.create_task(hold())
    await entered.wait()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    async with limiter.slot(max_wait=0):
        assert await redis.zcard(LEASES) == 1


async def test_a_killed_holders_lease_comes_back_after_the_lease_time(
    redis: Redis, redis_server: RedisServer
) -> None:
    limit: dict[str, Any] = {"rate": 0, "max_in_flight": 1, "lease_seconds": 1.0}
    holder = await python(HOLDER, redis_server.url, CREDENTIAL, json.dumps(limit))
    assert holder.stdout
    assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"held\n"
    held_at = time.monotonic()
    holder.kill()
    await holder.wait()

    limiter = Limiter(redis, CREDENTIAL, RateLimit(**limit))
    with pytest.raises(RateLimited) as refused:
        async with limiter.slot(max_wait=0):
            pass
    assert 0 < refused.value.retry_in <= 1.0
    async with limiter.slot(max_wait=5) as waited:
        assert time.monotonic() - held_at >= 0.8
    assert waited <= 3


def most_in_window(slots: list[int], seconds: float) -> int:
    """The most slots in any closed window of `seconds`, both ends included."""
    slots = sorted(slots)
    return max(bisect_right(slots, s + seconds * 1e6) - i for i, s in enumerate(slots))


@pytest.mark.parametrize(("rate", "burst"), [(50, 5), (20, 2), (50, 1)])
async def test_slots_leave_room_for_calls_that_reach_the_api_late(
    redis: Redis, rate: int, burst: int
) -> None:
    # Reserved back to back, the slots are the schedule itself, without any sleeper's jitter:
    # GCRA alone puts rate + burst slots into some closed second, so a call delayed in transit
    # by even a millisecond makes rate + burst + 1 in the API's window of one second.
    jitter = 0.05
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=rate, burst=burst, jitter=jitter))
    slots = []
    for _ in range(3 * rate):
        answer, _, slot = await limiter._call("acquire", "", 10_000_000)
        assert answer == 1
        slots.append(slot)
    assert most_in_window(slots, 1 + jitter) <= rate + burst
    # The guard costs the steady rate only where burst < 1 + jitter * rate.
    steady = min(rate, (rate + burst) / (1 + jitter))
    spread = (max(slots) - min(slots)) / 1e6
    assert (len(slots) - burst) / spread >= 0.97 * steady


async def test_a_pause_holds_every_slot_until_it_ends(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=100, burst=5))
    await limiter.pause(1.0)
    async with limiter.slot(max_wait=5) as waited:
        pass
    assert 0.9 <= waited <= 2.5


async def test_a_shorter_pause_does_not_shorten_a_longer_one(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0))
    await limiter.pause(0.5)
    await limiter.pause(3.0)
    await limiter.pause(0.5)
    with pytest.raises(RateLimited) as refused:
        async with limiter.slot(max_wait=1):
            pass
    assert 2.5 <= refused.value.retry_in <= 3.0


async def test_a_pause_during_the_wait_for_a_slot_holds_that_slot_too(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=2))
    async with limiter.slot(max_wait=0):
        pass

    async def pause_soon() -> None:
        await asyncio.sleep(0.1)
        await limiter.pause(1.0)

    pausing = asyncio.create_task(pause_soon())
    # Reserved for 0.5 s from now, before the pause came.
    async with limiter.slot(max_wait=5) as waited:
        pass
    await pausing
    assert waited >= 1.0


async def test_a_wait_beyond_max_wait_raises_and_reserves_nothing(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=2, max_in_flight=5))
    async with limiter.slot(max_wait=0):
        pass
    with pytest.raises(RateLimited) as refused:
        async with limiter.slot(max_wait=0.1):
            pass
    assert 0.3 <= refused.value.retry_in <= 0.5
    assert await redis.zcard(LEASES) == 0
    # The next slot is the one refused, 0.5 s after the first, not the one after it.
    async with limiter.slot(max_wait=5) as waited:
        pass
    assert waited < 0.75


async def test_a_full_cap_for_longer_than_max_wait_raises_and_holds_nothing(
    redis: Redis,
) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0, max_in_flight=1, lease_seconds=5))
    async with limiter.slot(max_wait=0):
        started = time.monotonic()
        with pytest.raises(RateLimited) as refused:
            async with limiter.slot(max_wait=0.2):
                pass
        assert time.monotonic() - started >= 0.2
        assert 0 < refused.value.retry_in <= 5
        assert await redis.zcard(LEASES) == 1


async def test_rate_zero_is_unlimited(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0))
    waits: list[float] = []

    async def call() -> None:
        async with limiter.slot(max_wait=0) as waited:
            waits.append(waited)

    await asyncio.gather(*(call() for _ in range(200)))
    assert len(waits) == 200
    assert await redis.keys("paylinks:ratelimit:*") == []


async def test_adaptive_mode_halves_the_rate_after_a_429_and_recovers(redis: Redis) -> None:
    limit = RateLimit(rate=10, adaptive=True, recovery_seconds=0.2)
    limiter = Limiter(redis, CREDENTIAL, limit)
    assert await limiter.effective_rate() == 10
    await limiter.pause(0.05)
    # Another 429, to a call sent before the first: it says nothing of the lowered rate.
    await limiter.pause(0.05)
    assert await Limiter(redis, CREDENTIAL, limit).effective_rate() == 5

    started = time.monotonic()
    for _ in range(3):
        async with limiter.slot(max_wait=5):
            pass
    # 0.2 s between slots; at the full rate the three would take 0.2 s.
    assert time.monotonic() - started >= 0.35

    raised_at: dict[float, float] = {}
    deadline = time.monotonic() + 10
    while await limiter.effective_rate() < 10 and time.monotonic() < deadline:
        await limiter.succeeded()
        raised_at.setdefault(await limiter.effective_rate(), time.monotonic())
        await asyncio.sleep(0.02)
    assert sorted(raised_at) == [6, 7, 8, 9, 10]
    # A step per recovery period, no faster.
    assert raised_at[10] - raised_at[6] >= 4 * 0.2 - 0.05


async def test_adaptive_mode_never_lowers_the_rate_below_a_tenth(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=10, adaptive=True, recovery_seconds=0.1))
    rates = []
    for _ in range(5):
        await limiter.pause(0.01)
        rates.append(await limiter.effective_rate())
        await asyncio.sleep(0.12)
    assert rates == [5, 2.5, 1.25, 1, 1]
