"""One rate limit for the whole fleet, kept in Redis: GCRA slots, in-flight leases, 429 pauses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from paylinks.jobs import layout
from paylinks.jobs.batches import now_ms
from paylinks.jobs.layout import AdaptiveField
from paylinks.jobs.records import Record, record_of
from paylinks.jobs.scripts import lua
from paylinks.worker import metrics
from paylinks.worker.autopipeline import AutoPipeline

# The script's answers to `acquire`, besides 1 for a reserved slot.
_TOO_LONG, _ALL_LEASED, _ENDED, _UNSETTLED = 0, 2, 3, 4
# A waiter for a lease asks again at least this often: the wake-up it needed may have gone to
# a waiter that was cancelled before it could take the lease.
_LEASE_POLL = 1.0
# Redis reads a BLPOP timeout under a millisecond as "block forever".
_SHORTEST_BLOCK = 0.01


class RateLimited(Exception):  # noqa: N818 - the name the job catches
    """The wait for a slot would be longer than the caller allows; nothing was reserved."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"rate limited, retry in {retry_in:.3f} s")
        self.retry_in = retry_in


class Ended(Exception):  # noqa: N818 - the name the job catches
    """The checkout request ended (or expired) before its slot: none was taken. `record` is
    its record or result, None when it is gone."""

    def __init__(self, record: Record | None) -> None:
        super().__init__(f"the checkout request ended ({record.state if record else 'expired'})")
        self.record = record


class Unsettled(Exception):  # noqa: N818 - the name the job catches
    """The checkout request's attempts are spent, or an earlier call of it may have made its
    session: no slot was taken, and the job looks at `record` before asking again."""

    def __init__(self, record: Record) -> None:
        super().__init__("the checkout request needs a look before its next call")
        self.record = record


@dataclass
class InFlight:
    """A checkout request to mark in flight in the same script call that gives its slot, as
    `Outcomes.move` would. The script reads its record in that call (`record`), gives no slot
    to a request that ended (Ended) nor, until the job has `looked` at it, to one whose
    attempts are spent (`max_tries`) or whose earlier call may have made a session
    (Unsettled). A slot due at once marks it, and `attempts` is then the record's attempts,
    this one counted; a slot further off leaves the mark to the caller, once the slot is sure,
    who sets `attempts` too: a slot taken again later must not mark it twice."""

    key: str
    max_tries: int
    looked: bool = False
    record: Record | None = None
    attempts: int | None = None

    def arguments(self) -> tuple[list[str], list[str | int]]:
        """The keys and arguments `acquire` takes for it."""
        keys = [layout.checkout_key(self.key), layout.result_key(self.key)]
        return keys, [now_ms(), layout.batch_key(""), self.max_tries, int(self.looked)]

    def read(self, stored: list[str] | str | None) -> Record | None:
        """The record (or result) as the script read it, kept for the job."""
        self.record = record_of(self.key, stored)
        return self.record


@dataclass(frozen=True)
class RateLimit:
    """The limit one API credential gets across the fleet.

    No one-second window holds more than `rate + burst` slots, and neither does any window of
    one second plus `jitter`: a call that reaches the API up to `jitter` seconds after its slot
    still keeps to the API's count. That costs nothing while `burst >= jitter * rate`;
    below it, the steady rate is `(rate + burst) / (1 + jitter)` when that is less than `rate`.

    A lease is held from the slot until the call is over, and comes back by itself
    `lease_seconds` after the slot if its holder dies: keep it above the HTTP timeout, or a
    slow call's lease lapses and the cap is briefly exceeded. In adaptive mode a 429 halves the
    rate (never below a tenth of `rate`), and each `recovery_seconds` without a 429 that see a
    successful call give back a tenth of `rate`.
    """

    rate: float
    burst: int = 1
    max_in_flight: int = 0
    lease_seconds: float = 30.0
    adaptive: bool = False
    recovery_seconds: float = 10.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or self.max_in_flight < 0 or self.jitter < 0:
            raise ValueError("rate, max_in_flight and jitter must be >= 0, burst >= 1")
        if self.lease_seconds <= 0 or self.recovery_seconds <= 0:
            raise ValueError("lease_seconds and recovery_seconds must be > 0")


class Limiter:
    """Slots of one credential's limit, shared through Redis by every process on every host.

    One script call reserves the next GCRA slot (after any pause) and, under a cap, a lease,
    held from then on; the caller then sleeps until its slot, with no retry loop. Only a full
    cap makes a caller wait on other callers: it blocks on a list each release pushes to
    (BLPOP), at most until the first lease expires or `_LEASE_POLL`, and asks again.
    Its keys are `layout.limiter_keys(credential)`.
    """

    def __init__(
        self,
        redis: Redis,
        credential: str,
        limit: RateLimit,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        self.redis = redis
        self.limit = limit
        self._keys = layout.limiter_keys(credential)
        self._config = [
            limit.rate,
            limit.burst,
            limit.max_in_flight,
            _micros(limit.lease_seconds),
            int(limit.adaptive),
            _micros(limit.recovery_seconds),
            _micros(limit.jitter),
        ]
        # Through the worker's pipeline when given: a call per job, sent with the others.
        self._script = (pipeline or redis).register_script(lua("paylinks.worker", "ratelimit"))
        # How late a caller may be for its slot at its last check and still call: half the
        # jitter the schedule leaves room for; the other half is for the call's way to the API.
        self.lateness = max(limit.jitter / 2, _SHORTEST_BLOCK) if limit.rate else float("inf")

    @asynccontextmanager
    async def slot(self, max_wait: float, mark: InFlight | None = None) -> AsyncIterator[Slot]:
        """Wait for the pause, a rate slot and a lease, and hold them.

        Raises RateLimited, holding nothing, when that would take longer than `max_wait`;
        with a `mark`, Ended when its record ended first. A caller that awaits anything
        between the slot and its call says `await slot.ready()` right before the call.
        """
        lease = uuid.uuid4().hex if self.limit.max_in_flight else ""
        try:
            slot = Slot(self, lease, time.monotonic() + max_wait, mark)
            await slot.ready()
            metrics.RATELIMIT_WAIT.observe(slot.waited)
            yield slot
        finally:
            if self.limit.max_in_flight:
                # Also after a failed `ready`: a cancellation can lose the answer of a script
                # that took the lease. Shielded, so a second cancellation cannot leak it.
                await asyncio.shield(self._call("release", lease))

    async def pause(self, seconds: float) -> None:
        """Hold every slot of the fleet for `seconds`, after a 429 (its Retry-After).

        A longer pause already set stands. In adaptive mode, also lowers the rate.
        """
        metrics.RATELIMIT_PAUSES.inc()
        await self._call("pause", _micros(seconds))

    async def succeeded(self) -> None:
        """Report a successful call: in adaptive mode, what lets a lowered rate recover."""
        if self.limit.adaptive and self.limit.rate:
            await self._call("recover")

    async def effective_rate(self) -> float:
        """The rate now in force: `rate`, or lower after a 429 in adaptive mode."""
        if not self.limit.adaptive:
            return self.limit.rate
        lowered: str | None = await self.redis.hget(self._keys.adaptive, AdaptiveField.RATE)  # type: ignore[misc]
        return min(self.limit.rate, float(lowered)) if lowered else self.limit.rate

    async def _call(self, operation: str, *args: str | int, more_keys: Sequence[str] = ()) -> Any:
        return await self._script(
            keys=[*self._keys, *more_keys], args=[operation, *self._config, *args]
        )


class Slot:
    """One caller's rate slot and lease, from the wait for them to the call they allow."""

    def __init__(
        self, limiter: Limiter, lease: str, deadline: float, mark: InFlight | None
    ) -> None:
        self.limiter = limiter
        self.lease = lease
        self.deadline = deadline
        # Marked by the script that gives a slot due at once; once marked, never again.
        self.mark = mark
        # Seconds spent waiting for the pause, the slot and the lease (not the round trips).
        self.waited = 0.0
        self._due: float | None = None
        self._at = 0
        self._id = ""

    async def ready(self) -> None:
        """Return once the call may go: on time for the slot held, or on a new one.

        A process stalled since its slot (a starved CPU, a slow round trip) must not send it
        with the next ones: a late slot is moved to now if every window that holds now has
        room for it, and given up if not (never given twice); a later one is then reserved.
        Raises RateLimited when that one is further than the deadline.
        """
        limiter = self.limiter
        while True:
            if self._due is not None:
                asked = time.monotonic()
                if asked - self._due <= limiter.lateness:
                    return
                taken, _ = await limiter._call("take", self._id, self._at)
                if taken:
                    # Checked again: the stall may have come during this round trip.
                    self._due = asked
                    continue
            slept = await self._reserve()
            if slept and await self._voided():
                self._due = None

    async def _reserve(self) -> bool:
        """Reserve the next slot (and a lease) and sleep until it; say whether it slept."""
        limiter = self.limiter
        while True:
            remaining = self.deadline - time.monotonic()
            mark = self.mark if self.mark and self.mark.attempts is None else None
            keys, marking = mark.arguments() if mark else ([], [])
            reply = await limiter._call(
                "acquire", self.lease, _micros(max(remaining, 0)), *marking, more_keys=keys
            )
            answer, micros, at, slot_id, *checkout = reply
            if mark:
                attempts, stored = checkout
                record = mark.read(stored)
                if answer == _ENDED or record is None:
                    raise Ended(record)
                if answer == _UNSETTLED:
                    raise Unsettled(record)
                mark.attempts = attempts or None
            wait: float = micros / 1_000_000
            if answer == _TOO_LONG or (answer == _ALL_LEASED and remaining <= 0):
                metrics.RATELIMIT_DEFERRALS.inc()
                raise RateLimited(wait)
            if answer == _ALL_LEASED:
                timeout = max(_SHORTEST_BLOCK, min(remaining, wait, _LEASE_POLL))
                blocked = time.monotonic()
                await limiter.redis.blpop([limiter._keys.wake], timeout)  # type: ignore[misc, arg-type]  # Redis 6+ takes a fraction
                self.waited += time.monotonic() - blocked
                continue
            self._at, self._id = at, slot_id
            self._due = time.monotonic() + wait
            if not micros:
                return False
            await asyncio.sleep(wait)
            self.waited += wait
            return True

    async def _voided(self) -> bool:
        """A 429 during the sleep voids the slot: taking it would break the pause, and every
        sleeper taking it at the pause's end would be a burst."""
        paused_until: str | None = await self.limiter.redis.get(self.limiter._keys.pause)
        return paused_until is not None and int(paused_until) > self._at


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)
