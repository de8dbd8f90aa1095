"""The fleet-wide rate limit on real Redis, with acquirers in this process and in others."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs import layout
from paylinks.jobs.records import result_value
from paylinks.worker import ratelimit
from paylinks.worker.ratelimit import (
    Ended,
    InFlight,
    Limiter,
    RateLimit,
    RateLimited,
    Unsettled,
)
from tests.helpers import ROOT

# Times slots to the millisecond: run alone, not beside other tests (see the Makefile).
pytestmark = pytest.mark.serial

CREDENTIAL = "test-credential"
LEASES = f"paylinks:ratelimit:{CREDENTIAL}:leases"
WAKE = f"paylinks:ratelimit:{CREDENTIAL}:wake"
TAT = f"paylinks:ratelimit:{CREDENTIAL}:tat"
PAUSE = f"paylinks:ratelimit:{CREDENTIAL}:pause"
ADAPTIVE = f"paylinks:ratelimit:{CREDENTIAL}:adaptive"

# Acquires slots in several tasks for a while, from the moment it reads a line on stdin, and
# prints when each slot was entered and every slot Redis reserved for it.
ACQUIRER = """
import asyncio, json, sys, time
from paylinks.jobs.connection import connect
from paylinks.worker.ratelimit import Limiter, RateLimit

class Recording(Limiter):
    slots = {}

    async def _call(self, operation, *args, **keys):
        answer = await super()._call(operation, *args, **keys)
        if operation == "acquire" and answer[0] == 1:
            self.slots[answer[3] or len(self.slots)] = answer[2]
        if operation == "take":
            if answer[0] == 1:
                self.slots[args[0]] = answer[1]
            else:
                self.slots.pop(args[0], None)
        return answer

async def main(url, credential, limit, tasks, seconds):
    redis = connect(url)
    limiter = Recording(redis, credential, RateLimit(**json.loads(limit)))
    stamps = []

    async def acquire(end):
        while time.time() < end:
            async with limiter.slot(max_wait=10):
                stamps.append(time.time())

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    end = time.time() + seconds
    await asyncio.gather(*(acquire(end) for _ in range(tasks)))
    granted = list(limiter.slots.values())
    print(json.dumps({"entered": stamps, "granted": granted}), flush=True)
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


class Recording(Limiter):
    """A limiter that keeps every slot Redis gave it (µs, on Redis's clock): where a late
    sleeper's slot was moved to, and none that was given up."""

    def __init__(self, redis: Redis, credential: str, limit: RateLimit) -> None:
        super().__init__(redis, credential, limit)
        self.slots: dict[object, int] = {}
        self.operations: list[str] = []

    @property
    def granted(self) -> list[int]:
        return list(self.slots.values())

    async def _call(self, operation: str, *args: str | int, **keys: Any) -> Any:
        answer = await super()._call(operation, *args, **keys)
        self.operations.append(operation)
        if operation == "acquire" and answer[0] == 1:
            self.slots[answer[3] or len(self.slots)] = answer[2]
        if operation == "take":
            if answer[0] == 1:
                self.slots[args[0]] = answer[1]
            else:
                self.slots.pop(args[0], None)
        return answer


def mean_rate(stamps: list[float], burst: int) -> float:
    # The burst goes at once; after it, slots come at the rate.
    return (len(stamps) - burst) / (max(stamps) - min(stamps))


def most_in_window(slots: list[int], seconds: float) -> int:
    """The most slots in any closed window of `seconds`, both ends included."""
    slots = sorted(slots)
    return max(bisect_right(slots, s + seconds * 1e6) - i for i, s in enumerate(slots))


RATE, BURST, JITTER = 50, 5, 0.05


# What the limiter guarantees is its schedule: every window of 1 s + jitter holds at most
# rate + burst of the slots it grants. When a task then enters its slot depends on how soon
# a loaded machine wakes it, so the windows are counted on the slots granted (Redis's clock),
# every one of them, a slot given up after a late wake-up included.


async def test_concurrent_acquirers_in_one_process_keep_to_the_rate(redis: Redis) -> None:
    limiter = Recording(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST, jitter=JITTER))
    stamps = await acquire_for(limiter, 1.5, tasks=20)
    busiest = most_in_window(limiter.granted, 1 + JITTER)
    print(f"one process: at most {busiest} slots granted in {1 + JITTER} s, mean rate", end=" ")
    print(f"{mean_rate(stamps, BURST):.1f}/s over {len(stamps)} slots")
    assert busiest <= RATE + BURST
    assert mean_rate(stamps, BURST) >= 0.9 * RATE


async def test_acquirers_in_several_processes_share_one_rate(
    redis: Redis, redis_server: RedisServer
) -> None:
    limit = json.dumps({"rate": RATE, "burst": BURST, "jitter": JITTER})
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
    limiter = Recording(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST, jitter=JITTER))
    here = await acquire_for(limiter, 1.5, tasks=8)
    elsewhere = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
    per_process = [json.loads(out) for out, _ in elsewhere]
    stamps = here + [stamp for run in per_process for stamp in run["entered"]]
    granted = limiter.granted + [slot for run in per_process for slot in run["granted"]]
    busiest = most_in_window(granted, 1 + JITTER)
    print(f"four processes: at most {busiest} slots granted in {1 + JITTER} s, mean", end=" ")
    print(f"rate {mean_rate(stamps, BURST):.1f}/s over {len(stamps)} slots")
    assert all(run["entered"] for run in per_process), "every process got slots"
    assert busiest <= RATE + BURST
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


async def blocked_on_blpop(redis: Redis) -> bool:
    return any(client.get("cmd") == "blpop" for client in await redis.client_list())


async def test_a_released_lease_wakes_a_waiter_without_polling(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither the waiter's poll nor the lease's expiry comes within the test's deadline:
    # only the release's wake-up can let the waiter in.
    monkeypatch.setattr(ratelimit, "_LEASE_POLL", 600.0)
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=0, max_in_flight=1, lease_seconds=600))
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(max_wait=0):
            entered.set()
            await release.wait()

    async def wait_for_the_lease() -> int:
        async with limiter.slot(max_wait=600):
            # Read before its own release pushes a wake-up for the next waiter.
            wake_ups_left: int = await redis.llen(WAKE)  # type: ignore[misc]
            return wake_ups_left

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiter = asyncio.create_task(wait_for_the_lease())
    await until(lambda: blocked_on_blpop(redis), "the waiter blocks on the wake-up list")
    release.set()
    await holder
    assert await asyncio.wait_for(waiter, 30) == 0, "the release's wake-up went to the waiter"


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
    async with limiter.slot(max_wait=5) as slot:
        assert time.monotonic() - held_at >= 0.8
    assert slot.waited <= 3


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
        answer, _, slot, _ = await limiter._call("acquire", "", 10_000_000)
        assert answer == 1
        slots.append(slot)
    assert most_in_window(slots, 1 + jitter) <= rate + burst
    # The guard costs the steady rate only where burst < jitter * rate.
    steady = min(rate, (rate + burst) / (1 + jitter))
    spread = (max(slots) - min(slots)) / 1e6
    assert (len(slots) - burst) / spread >= 0.97 * steady


async def test_a_sleeper_that_woke_late_calls_now_only_where_a_window_has_room(
    redis: Redis,
) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST, jitter=JITTER))
    slots_key = limiter._keys.slots
    # Alone, a slot taken late moves to the time it is taken: the schedule keeps room for it.
    _, _, first, first_id = await limiter._call("acquire", "", 10_000_000)
    taken, at = await limiter._call("take", first_id, first)
    assert taken == 1
    assert at >= first
    assert await redis.zscore(slots_key, first_id) == at
    # Then two seconds of slots reserved back to back: the windows that hold now already
    # have rate + burst slots, so a slot moved to now would be one too many. It is given up,
    # and counts in no window any more.
    reserved = [await limiter._call("acquire", "", 10_000_000) for _ in range(2 * RATE)]
    assert most_in_window([r[2] for r in reserved] + [at], 1 + JITTER) == RATE + BURST
    _, _, early, early_id = reserved[-1]
    taken, _ = await limiter._call("take", early_id, early)
    assert taken == 0
    assert await redis.zscore(slots_key, early_id) is None
    # Given back, not lost: the next slot reserved is the one given up.
    answer, _, following, following_id = await limiter._call("acquire", "", 10_000_000)
    assert (answer, following) == (1, early)
    assert following_id not in {r[3] for r in reserved}


async def test_a_caller_stalled_after_its_slot_takes_it_again_before_calling(
    redis: Redis,
) -> None:
    limiter = Recording(redis, CREDENTIAL, RateLimit(rate=RATE, burst=BURST, jitter=JITTER))
    async with limiter.slot(max_wait=5) as slot:
        given = limiter.granted[-1]
        # On time, the last check costs no round trip and keeps the slot.
        await slot.ready()
        assert (limiter.operations, limiter.granted) == (["acquire"], [given])
        # The whole process stalls (as a starved worker does between its slot and its call)
        # for longer than the schedule leaves room for: the slot is not sent late, it is
        # moved to when the caller is ready, on Redis's clock.
        time.sleep(JITTER)  # noqa: ASYNC251 - the stall itself
        before = await redis_micros(redis)
        await slot.ready()
        after = await redis_micros(redis)
    assert limiter.operations == ["acquire", "take"]
    (moved,) = limiter.granted
    assert moved >= given + JITTER * 1e6
    assert before <= moved <= after


async def redis_micros(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1_000_000 + micros


async def test_a_pause_holds_every_slot_until_it_ends(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=100, burst=5))
    await limiter.pause(1.0)
    async with limiter.slot(max_wait=5) as slot:
        pass
    assert 0.9 <= slot.waited <= 2.5


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
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=1))
    async with limiter.slot(max_wait=0):
        pass
    first = await redis.get(TAT)

    async def enter() -> float:
        async with limiter.slot(max_wait=10):
            return time.time()

    entering = asyncio.create_task(enter())

    async def reserved() -> bool:
        return bool(await redis.get(TAT) != first)

    # The next slot, a second away, is reserved once the schedule moves on; the pause comes
    # then, while its holder sleeps towards it, and ends half a second after it.
    await until(reserved, "the next slot is reserved")
    await limiter.pause(1.5)
    paused_until = int(await redis.get(PAUSE) or 0) / 1e6
    entered = await asyncio.wait_for(entering, 30)
    # Both clocks are this host's; the tolerance only covers rounding to microseconds.
    assert entered >= paused_until - 0.001


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
    async with limiter.slot(max_wait=5) as slot:
        pass
    assert slot.waited < 0.75


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
        async with limiter.slot(max_wait=0) as slot:
            waits.append(slot.waited)

    await asyncio.gather(*(call() for _ in range(200)))
    # Every one of them at once: no slot, no wait, not one refused under max_wait=0.
    assert waits == [0.0] * 200
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

    # When each step was taken, on Redis's clock (the script's own record of it); the step
    # back to the full rate forgets the record.
    stepped_at = {5.0: int(await redis.hget(ADAPTIVE, "at"))}  # type: ignore[misc]
    deadline = time.monotonic() + 10
    while await limiter.effective_rate() < 10 and time.monotonic() < deadline:
        await limiter.succeeded()
        rate = await limiter.effective_rate()
        at = await redis.hget(ADAPTIVE, "at")  # type: ignore[misc]
        if at is not None:
            stepped_at.setdefault(rate, int(at))
        await asyncio.sleep(0.02)
    assert await limiter.effective_rate() == 10
    assert sorted(stepped_at) == [5, 6, 7, 8, 9]
    # A step per recovery period, no faster.
    times = [stepped_at[rate] for rate in sorted(stepped_at)]
    assert all(later - earlier >= 200_000 for earlier, later in itertools.pairwise(times))


async def test_adaptive_mode_never_lowers_the_rate_below_a_tenth(redis: Redis) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=10, adaptive=True, recovery_seconds=0.1))
    rates = []
    for _ in range(5):
        await limiter.pause(0.01)
        rates.append(await limiter.effective_rate())
        # A 429 within the hold after a cut says nothing new: the next one must come after it.
        hold = int(await redis.hget(ADAPTIVE, "hold"))  # type: ignore[misc]
        await until(functools.partial(redis_passed, redis, hold), "the hold after a cut is over")
    assert rates == [5, 2.5, 1.25, 1, 1]


async def redis_passed(redis: Redis, moment_us: int) -> bool:
    seconds, micros = await redis.time()
    return bool(seconds * 1_000_000 + micros > moment_us)


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.01)


async def test_a_slot_due_at_once_marks_its_record_in_flight_and_an_ended_one_takes_none(
    redis: Redis,
) -> None:
    limiter = Limiter(redis, CREDENTIAL, RateLimit(rate=10, burst=2))
    record, batch = layout.checkout_key("k"), layout.batch_key("b")
    await redis.hset(  # type: ignore[misc]
        record,
        mapping={"state": "retrying", "attempts": 1, "batch": "b", "checkout_token": "t"},
    )
    await redis.hset(batch, mapping={"retrying": 1, "in_progress": 0})  # type: ignore[misc]
    mark = InFlight("k", max_tries=5)
    async with limiter.slot(max_wait=5, mark=mark):
        pass
    assert mark.attempts == 2
    assert mark.record is not None, "the record comes with the slot, read in the same call"
    assert (mark.record.state, mark.record.attempts, mark.record.batch) == ("retrying", 1, "b")
    stored = await redis.hgetall(record)  # type: ignore[misc]
    assert (stored["state"], stored["attempts"]) == ("in_progress", "2")
    assert stored["sent_at"] == stored["updated_at"]
    assert await redis.hgetall(batch) == {"retrying": "0", "in_progress": "1"}  # type: ignore[misc]

    # In flight with no answer: the job looks first, and is given no slot until it has.
    tat = await redis.get(TAT)
    with pytest.raises(Unsettled) as unsettled:
        async with limiter.slot(max_wait=5, mark=InFlight("k", max_tries=5)):
            raise AssertionError("a request an earlier call may have made must get no slot")
    assert unsettled.value.record.sent_at_ms == int(stored["sent_at"])
    assert await redis.get(TAT) == tat, "no slot was spent on it"
    looked = InFlight("k", max_tries=5, looked=True)
    async with limiter.slot(max_wait=5, mark=looked):
        pass
    assert looked.attempts == 3
    assert await redis.get(TAT) != tat

    # Out of attempts: no slot either, until looked at.
    await redis.hset(record, mapping={"state": "retrying", "sent_at": ""})  # type: ignore[misc]
    await redis.hdel(record, "sent_at")  # type: ignore[misc]
    tat = await redis.get(TAT)
    with pytest.raises(Unsettled):
        async with limiter.slot(max_wait=5, mark=InFlight("k", max_tries=3)):
            raise AssertionError("a request out of attempts must get no slot")
    assert await redis.get(TAT) == tat

    await redis.hset(record, "state", "created")  # type: ignore[misc]
    with pytest.raises(Ended) as ended:
        async with limiter.slot(max_wait=5, mark=InFlight("k", max_tries=5)):
            raise AssertionError("an ended request must get no slot")
    assert ended.value.record is not None
    assert ended.value.record.state == "created"
    assert await redis.get(TAT) == tat, "no slot was spent on it"
    assert await redis.hget(record, "attempts") == "3"  # type: ignore[misc]

    # Created and become its result, or gone: ended too, with the result or nothing.
    await redis.delete(record)
    result = result_value({"batch": "b", "checkout_token": "t", "attempts": 3})
    await redis.set(layout.result_key("k"), result)
    with pytest.raises(Ended) as ended:
        async with limiter.slot(max_wait=5, mark=InFlight("k", max_tries=5)):
            raise AssertionError("a created request must get no slot")
    assert ended.value.record is not None
    assert ended.value.record.attempts == 3
    await redis.delete(layout.result_key("k"))
    with pytest.raises(Ended) as ended:
        async with limiter.slot(max_wait=5, mark=InFlight("k", max_tries=5)):
            raise AssertionError("a request gone must get no slot")
    assert ended.value.record is None
    assert await redis.get(TAT) == tat
