"""The arq job: create one checkout session, exactly once, and record how it ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
from arq import Retry
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from paylinks.jobs import layout
from paylinks.jobs.batches import now_ms
from paylinks.jobs.layout import BatchField, RecordField, State
from paylinks.jobs.logs import get_logger
from paylinks.jobs.models import CheckoutSession, personal_data
from paylinks.jobs.records import Record
from paylinks.worker import metrics
from paylinks.worker.auth import AuthError
from paylinks.worker.autopipeline import AutoPipeline
from paylinks.worker.config import WorkerConfig
from paylinks.worker.conomy import ApiAnswer, ConomyClient
from paylinks.worker.outcomes import Outcomes
from paylinks.worker.ratelimit import Ended, InFlight, Limiter, RateLimited, Unsettled
from paylinks.worker.reconcile import Found, LookupFailedError, find_sessions, since_ms
from paylinks.worker.retries import Verdict, backoff, is_retryable, retry_after_seconds, verdict

# How much of a failed call's response body a dead letter keeps.
RESPONSE_KEPT = 2000
# A job gives up a tenth before arq's own timeout (at most 5 s), which would drop it
# without a word.
DEADLINE_MARGIN = 5.0
# A wait for a slot shorter than this is not counted on the batch (a round trip saved).
WAIT_COUNTED = 0.001


@dataclass(frozen=True)
class NoAnswer:
    """The call got no answer (a timeout, a lost connection): the session may exist or not."""

    reason: str


# What a call comes back with: the API's answer, the token endpoint's failure, or none.
Answer = ApiAnswer | AuthError | NoAnswer


@dataclass(frozen=True)
class Deps:
    """What every job of a worker process shares, built once at startup (`ctx["paylinks"]`)."""

    config: WorkerConfig
    redis: Redis
    pipeline: AutoPipeline
    http: aiohttp.ClientSession
    client: ConomyClient
    outcomes: Outcomes
    limiter: Limiter
    # The process's logger, made once: each job binds its request to it, where making one
    # per job cost a log event's worth of CPU again.
    log: Any = field(default_factory=get_logger)


async def create_checkout_session(ctx: dict[str, Any], key: str) -> str:
    deps: Deps = ctx["paylinks"]
    deadline = deps.config.job_timeout - min(DEADLINE_MARGIN, deps.config.job_timeout / 10)
    try:
        async with asyncio.timeout(deadline):
            return await _create(deps, key)
    except (RedisError, TimeoutError) as e:
        # Redis stayed away longer than the client's own retries, or the job ran out of
        # time (a slow token endpoint, a long wait for a slot). The record keeps its state,
        # so the next run carries on from it and resends the same Idempotency-Key.
        reason = "job deadline" if isinstance(e, TimeoutError) else f"redis: {type(e).__name__}"
        metrics.retried(reason)
        delay = backoff(ctx["job_try"], deps.config.retry_base, deps.config.retry_cap)
        deps.log.bind(idempotency_key=key).warning(
            "checkout.retrying", reason=reason, retry_in_s=round(delay, 3)
        )
        raise Retry(defer=delay) from e


async def _create(deps: Deps, key: str) -> str:
    # The script that gives the slot reads the record: a request done or out of attempts
    # takes no slot, and one an earlier call may have made is looked at first.
    mark = InFlight(key, deps.config.max_tries)
    try:
        try:
            return await _post(deps, mark)
        except Unsettled as e:
            settled = await _settle(deps, e.record, _logger(deps, e.record))
            if settled is not None:
                return settled
            mark.looked = True
            return await _post(deps, mark)
    except RateLimited as e:
        # No slot soon enough: not an attempt, the record keeps its state, and the job
        # comes back when the limiter expects a slot to be free.
        log = _logger(deps, mark.record) if mark.record else deps.log.bind(idempotency_key=key)
        log.info("ratelimit.deferred", retry_in_s=round(e.retry_in, 3))
        raise Retry(defer=e.retry_in) from e
    except Ended as e:
        # Finished by another run of the job (or gone): no slot was spent on it.
        if e.record is None:
            deps.log.bind(idempotency_key=key).warning("checkout.missing")
            return "missing"
        return await _skipped(deps, e.record, _logger(deps, e.record), e.record.state.value)


def _logger(deps: Deps, record: Record) -> Any:
    return deps.log.bind(
        batch=record.batch, checkout_token=record.checkout_token, idempotency_key=record.key
    )


async def _settle(deps: Deps, record: Record, log: Any) -> str | None:
    """The outcome of a request whose attempts are spent or whose earlier call may have made
    its session; None when it may be posted."""
    if record.attempts >= deps.config.max_tries:
        last = Attempt(deps, record, log, record.attempts, time.monotonic())
        return await last.fail(f"gave up after {record.attempts} attempts")
    since = record.unanswered_since() if deps.config.reconcile else None
    if since is None:
        return None
    # An earlier attempt's answer never came: its session may exist, or its request may still
    # be on its way. Looked up only once it can no longer be.
    look_up_in = _settled_at(deps.config, record) - now_ms()
    if look_up_in > 0:
        log.info("lookup.deferred", look_up_in_s=look_up_in / 1000)
        raise Retry(defer=look_up_in / 1000)
    return await _look_before_posting(deps, record, log, since)


async def _post(deps: Deps, mark: InFlight) -> str:
    """Take a slot for the request, send it, and record how it ended."""
    async with deps.limiter.slot(max_wait=deps.config.rate_max_wait, mark=mark) as slot:
        record = mark.record
        assert record is not None, "a slot given to a checkout request comes with its record"
        log = _logger(deps, record)
        # Marked in flight, with the time of the call, before the call: if this worker dies
        # now, the next run of the job knows the session may exist. A slot due at once was
        # marked by the script that gave it.
        number = mark.attempts or await deps.outcomes.move(
            record, State.IN_PROGRESS, {RecordField.SENT_AT: now_ms()}, new_attempt=True
        )
        mark.attempts = number
        attempt = Attempt(deps, record, log.bind(attempt=number), number, time.monotonic())
        # A stall during the move must not send the slot late, with the next ones. A slot
        # lost here defers the job with the record in flight: its next run looks first.
        await slot.ready()
        answer = await _call(deps, record)

    outcome = await _decide(attempt, answer)
    # Bookkeeping after the outcome is safe: losing it must never cost a second call.
    try:
        if slot.waited >= WAIT_COUNTED:
            await _waited(attempt, slot.waited)
        if isinstance(answer, ApiAnswer) and answer.ok:
            await deps.limiter.succeeded()
    except RedisError as e:
        attempt.log.warning("ratelimit.unrecorded", reason=type(e).__name__)
    return outcome


async def _skipped(deps: Deps, record: Record, log: Any, state: str) -> str:
    # The request ended in another run (or in one that died between the record's last move
    # and its batch's completion): complete the batch now if it is due.
    log.info("checkout.skipped", state=state)
    await deps.outcomes.batches.complete(record.batch)
    return state


def _settled_at(config: WorkerConfig, record: Record) -> int:
    """When (ms) the last unanswered call can no longer reach the API, plus the look-up's delay.

    A retry was recorded when that call was given up; a record still in flight is a worker's
    that died during the call, which went on for at most the HTTP timeout after the mark.
    """
    last = record.updated_at_ms or record.sent_at_ms or 0
    in_flight = config.http_timeout if record.state == State.IN_PROGRESS else 0
    return last + round((in_flight + config.reconcile_delay) * 1000)


async def _look_before_posting(deps: Deps, record: Record, log: Any, since: int) -> str | None:
    """The outcome when the session is found; None when it is not, and it may be posted."""
    try:
        found = await _find(deps, record, since)
    except (LookupFailedError, aiohttp.ClientError, TimeoutError) as e:
        # Posting without knowing could make a second session: this attempt ends here, and
        # the next one looks again.
        number = await deps.outcomes.move(record, State.IN_PROGRESS, new_attempt=True)
        attempt = Attempt(deps, record, log.bind(attempt=number), number, time.monotonic())
        return await attempt.retry(_lookup_failure(deps, e))
    if not found.sessions:
        log.info("checkout.not_found", lookups=found.lookups)
        return None
    return await Attempt(deps, record, log, record.attempts, time.monotonic()).reconciled(found)


async def _find(deps: Deps, record: Record, since: int) -> Found:
    owner = orjson.loads(record.request)["owner"]["identityId"]
    return await find_sessions(
        deps.client,
        deps.limiter,
        owner=owner,
        checkout_token=record.checkout_token,
        since=since_ms(since),
        max_wait=deps.config.rate_max_wait,
    )


def _lookup_failure(deps: Deps, error: Exception) -> str:
    if isinstance(error, LookupFailedError):
        return f"look-up: {error}"
    if isinstance(error, TimeoutError):
        return "look-up: timeout"
    if isinstance(error, RateLimited):
        return "look-up: rate limited"
    return f"look-up: connection to {deps.client.address}: {type(error).__name__}"


async def _call(deps: Deps, record: Record) -> Answer:
    try:
        return await deps.client.create_checkout_session(record.request.encode(), record.key)
    except (aiohttp.ClientError, TimeoutError) as e:
        if isinstance(e, TimeoutError):
            return NoAnswer("timeout")
        return NoAnswer(f"connection to {deps.client.address}: {type(e).__name__}")
    except AuthError as e:
        return e


async def _decide(attempt: Attempt, answer: Answer) -> str:
    """Where an answer leads: created, another attempt after a backoff, or failed for good."""
    if isinstance(answer, NoAnswer):
        # The session may exist: `sent_at` stays, and the next attempt looks for it.
        return await attempt.retry(answer.reason)
    if isinstance(answer, AuthError):
        attempt = replace(attempt, answered=True)
        if answer.status is not None and not is_retryable(answer.status):
            return await attempt.fail(f"authentication: {answer}")
        return await attempt.retry(str(answer))
    log = attempt.log.bind(http_status=answer.status, duration_ms=attempt.ms())
    attempt = replace(attempt, answered=True, log=log)
    if answer.ok:
        return await attempt.created_from(answer)
    error = answer.error()
    match verdict(answer.status, error.code, error.type):
        case Verdict.THROTTLED:
            # The limit is the credential's: every worker holds off, not only this one.
            pause = retry_after_seconds(answer.retry_after) or attempt.deps.config.retry_base
            await attempt.deps.limiter.pause(pause)
            return await attempt.retry(error.message, answer)
        case Verdict.RETRY:
            return await attempt.retry(error.message, answer)
        case Verdict.EXISTS if attempt.deps.config.reconcile:
            return await _already_exists(attempt, answer)
        case Verdict.EXISTS if attempt.number > 1:
            reason = (
                f"{error.message} (on attempt {attempt.number}: an earlier attempt may have "
                "created the session; check with the API before retrying this dead letter)"
            )
            return await attempt.fail(reason, answer)
    return await attempt.fail(error.message, answer)


async def _already_exists(attempt: Attempt, answer: ApiAnswer) -> str:
    """A 409 alreadyExist: the token has a session, made by an earlier attempt of ours (or by
    someone else before it was enqueued, which the look-up from its enqueueing cannot see)."""
    record = attempt.record
    message = answer.error().message
    try:
        found = await _find(attempt.deps, record, record.enqueued_at_ms)
    except (RateLimited, LookupFailedError, aiohttp.ClientError, TimeoutError) as e:
        return await attempt.retry(f"{message}; {_lookup_failure(attempt.deps, e)}", answer)
    if not found.sessions:
        reason = (
            f"{message} (the API holds a session for this checkoutToken, but none created "
            "since it was enqueued: made elsewhere?)"
        )
        return await attempt.fail(reason, answer)
    return await attempt.reconciled(found)


async def _waited(attempt: Attempt, waited: float) -> None:
    waited_ms = int(waited * 1000)
    attempt.log.info("ratelimit.waited", waited_ms=waited_ms)
    batch = layout.batch_key(attempt.record.batch)
    await attempt.deps.redis.hincrby(batch, BatchField.RATELIMIT_WAIT_MS, waited_ms)  # type: ignore[misc]


@dataclass(frozen=True)
class Attempt:
    """One attempt at a checkout request, from its call on: how it ends, on the record and in
    the log."""

    deps: Deps
    record: Record
    log: Any
    number: int
    started: float
    # Whether the call was answered: then no session exists that the answer did not name.
    answered: bool = False

    async def created_from(self, answer: ApiAnswer) -> str:
        try:
            session = CheckoutSession.model_validate_json(answer.body)
        except ValidationError:
            # The session exists but we cannot read it. Asking again would create a second
            # one from an API that ignores Idempotency-Key: a person looks at the kept answer.
            reason = f"the API answered {answer.status} but not with a readable checkout session"
            return await self.fail(reason, answer)
        return await self.created(session, answer.status)

    async def reconciled(self, found: Found) -> str:
        """Created with the session an earlier attempt made; beyond the oldest, the others are
        named on the record and in a dead letter, for a person to invalidate."""
        kept, *others = found.sessions
        log = self.log.bind(lookups=found.lookups)
        attempt = replace(self, log=log, answered=True)
        if others:
            # Listed before the record moves: a worker dying in between leaves the dead
            # letter, and the next run finds the same sessions again.
            await self.deps.redis.zadd(layout.DEAD_LETTERS, {self.record.key: now_ms()})
        return await attempt.created(
            kept, None, event="checkout.reconciled", duplicates=[s.id for s in others]
        )

    async def created(
        self,
        session: CheckoutSession,
        status: int | None,
        *,
        event: str = "checkout.created",
        duplicates: Sequence[str] = (),
    ) -> str:
        reason = None
        if duplicates:
            reason = (
                f"the API holds {len(duplicates) + 1} sessions for this checkoutToken: kept "
                f"{session.id}, the oldest; invalidate {', '.join(duplicates)}"
            )

        def announce() -> None:
            if not session.url:
                self.log.warning("checkout.incomplete", session_id=session.id, missing="url")
            self.log.info(event, session_id=session.id, expires_at=session.expires_at)
            if duplicates:
                self.log.error(
                    "checkout.duplicated", session_id=session.id, duplicate_sessions=duplicates
                )

        await self.deps.outcomes.move(
            self.record,
            State.CREATED,
            {
                RecordField.SESSION_ID: session.id,
                RecordField.URL: session.url,
                RecordField.EXPIRES_AT: session.expires_at,
                RecordField.HTTP_STATUS: status,
                RecordField.ERROR: reason,
                RecordField.ERROR_CODE: None,
                RecordField.ERROR_TYPE: None,
                RecordField.TRACE_ID: None,
                RecordField.SENT_AT: None,
                RecordField.DUPLICATE_SESSIONS: ",".join(duplicates),
            },
            announce=announce,
        )
        metrics.created(self.record.enqueued_at_ms, status, event.removeprefix("checkout."))
        return State.CREATED.value

    async def retry(self, reason: str, answer: ApiAnswer | None = None) -> str:
        """Another attempt after a backoff (arq's Retry), unless this was the last allowed."""
        config = self.deps.config
        if self.number >= config.max_tries:
            return await self.fail(f"{reason} (after {self.number} attempts)", answer)
        retry_after = retry_after_seconds(answer.retry_after) if answer else None
        delay = backoff(self.number, config.retry_base, config.retry_cap, retry_after)
        fields = self._error_fields(reason, answer)
        await self.deps.outcomes.move(self.record, State.RETRYING, fields)
        metrics.retried(reason, answer)
        self.log.warning(
            "checkout.retrying",
            reason=reason,
            personal_data=self._personal_data(),
            http_status=fields[RecordField.HTTP_STATUS],
            error_type=fields[RecordField.ERROR_TYPE],
            trace_id=fields[RecordField.TRACE_ID],
            retry_in_s=round(delay, 3),
            duration_ms=self.ms(),
        )
        raise Retry(defer=delay)

    async def fail(self, reason: str, answer: ApiAnswer | None = None) -> str:
        """Failed for good: the record says why, and the request joins the dead letters."""
        fields = self._error_fields(reason, answer)
        fields[RecordField.RESPONSE] = (
            answer.body[:RESPONSE_KEPT].decode(errors="replace") if answer else None
        )
        await self.deps.outcomes.move(
            self.record,
            State.FAILED,
            fields,
            announce=lambda: self.log.error(
                "checkout.failed",
                reason=reason,
                http_status=fields[RecordField.HTTP_STATUS],
                error_type=fields[RecordField.ERROR_TYPE],
                trace_id=fields[RecordField.TRACE_ID],
                attempt=self.number,
                personal_data=self._personal_data(),
            ),
        )
        metrics.failed(reason, answer)
        return State.FAILED.value

    def _error_fields(
        self, reason: str, answer: ApiAnswer | None
    ) -> dict[RecordField, str | int | None]:
        error = answer.error() if answer else None
        fields: dict[RecordField, str | int | None] = {
            RecordField.ERROR: reason,
            RecordField.HTTP_STATUS: answer.status if answer else None,
            RecordField.ERROR_CODE: error.code if error else None,
            RecordField.ERROR_TYPE: error.type if error else None,
            RecordField.TRACE_ID: error.trace_id if error else None,
        }
        if self.answered:
            # Answered: no session was made that the record does not know of.
            fields[RecordField.SENT_AT] = None
        return fields

    def ms(self) -> int:
        """Milliseconds since the call started."""
        return int((time.monotonic() - self.started) * 1000)

    def _personal_data(self) -> list[str]:
        """What the Redactor must take out of a reason the API wrote: parsed only for the
        events that carry one, not on every job."""
        body = orjson.loads(self.record.request)
        return personal_data(body) if isinstance(body, dict) else []
