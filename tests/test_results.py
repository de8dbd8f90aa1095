"""A created request's result: one short string in place of its record, read by everything
that read the record (results, status, the dashboard, dead letters), with its body's digest
for conflicts; records of the release before, and failed ones, keep their layout."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from paylinks.dashboard.failures import letters_page
from paylinks.dashboard.requests import find_by_token, read_request, read_rows
from paylinks.jobs import layout
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.deadletters import DeadLetters, dead_letters
from paylinks.jobs.layout import RecordField, State, checkout_key, idempotency_key, result_key
from paylinks.jobs.producer import Producer
from paylinks.jobs.records import Record, read_record, result_fields, result_value
from paylinks.worker.auth import credential_id
from paylinks.worker.config import ConomyConfig
from paylinks.worker.outcomes import Outcomes
from tests.helpers import Sandbox, cleaned_up, example_requests, log_events, spawn_worker

# How a job's run ends, in its log.
ENDED = {"checkout.skipped", "checkout.missing", "checkout.created", "checkout.failed"}
# What the sandbox answers: a url of 70 characters, over hash-max-listpack-value (64).
SESSION = {
    RecordField.SESSION_ID: "cs_" + "5" * 32,
    RecordField.URL: "http://127.0.0.1:45678/sandbox/pay/cs_" + "5" * 32,
    RecordField.EXPIRES_AT: "2026-12-04T13:29:09.123Z",
    RecordField.HTTP_STATUS: 201,
}


def producer(redis: Redis) -> Producer:
    return Producer(redis, ProducerConfig())


async def enqueued(redis: Redis, requests: list[dict[str, Any]]) -> str:
    report = await producer(redis).enqueue(requests, batch="results")
    assert report.enqueued == len(requests), report.as_json()
    return report.batch


async def created(redis: Redis, token: str, **fields: Any) -> Record:
    """The request moved as a job moves it: in flight, then created with its session."""
    outcomes = Outcomes(redis)
    record = await read_record(redis, idempotency_key(token))
    assert record is not None
    # An attempt that failed first: its error is not the result's.
    failure = {RecordField.ERROR: "HTTP 500", RecordField.HTTP_STATUS: 500}
    await outcomes.move(record, State.RETRYING, failure, new_attempt=True)
    await outcomes.move(record, State.IN_PROGRESS, {RecordField.SENT_AT: 1}, new_attempt=True)
    await outcomes.move(record, State.CREATED, {**SESSION, RecordField.SENT_AT: None, **fields})
    return record


async def test_a_created_request_becomes_one_short_string_that_every_reader_reads(
    redis: Redis,
) -> None:
    requests = example_requests(2)
    batch = await enqueued(redis, requests)
    token = requests[0]["checkoutToken"]
    key = idempotency_key(token)
    body: str = await redis.hget(checkout_key(key), RecordField.REQUEST)  # type: ignore[misc]
    enqueued_at = int(await redis.hget(checkout_key(key), RecordField.ENQUEUED_AT))  # type: ignore[misc]
    await created(redis, token)

    assert not await redis.exists(checkout_key(key))
    result: str = await redis.get(result_key(key))
    assert await redis.pttl(result_key(key)) > 0, "the result keeps the record's expiry"
    assert body not in result
    fields = result_fields(result)
    assert fields[RecordField.REQUEST_DIGEST] == hashlib.sha1(body.encode()).hexdigest()[:20]
    assert result_value(fields) == result, "the Python packing is the script's"
    # One string, not a hash of fields: well under the 500 bytes a result may keep.
    assert await redis.object("encoding", result_key(key)) in ("raw", "embstr")
    assert await redis.memory_usage(result_key(key), samples=0) <= 400

    record = await read_record(redis, key)
    assert record is not None
    assert (record.state, record.batch, record.checkout_token) == (State.CREATED, batch, token)
    assert record.enqueued_at_ms == enqueued_at
    assert record.updated_at_ms is not None
    assert record.updated_at_ms >= enqueued_at
    rows = [row async for row in producer(redis).results(batch)]
    assert rows[0] == {
        "checkoutToken": token,
        "state": "created",
        "sessionId": SESSION[RecordField.SESSION_ID],
        "url": SESSION[RecordField.URL],
        "expiresAt": SESSION[RecordField.EXPIRES_AT],
        "attempts": 2,
        "error": None,
        "errorCode": None,
        "errorType": None,
        "traceId": None,
        "duplicateSessions": None,
    }
    assert rows[1]["state"] == "pending"
    status = await producer(redis).status(batch)
    assert status is not None
    assert (status["created"], status["queued"]) == (1, 1)
    counts = await producer(redis).wait_for([key])
    assert counts == {"created": 1, "failed": 0, "expired": 0}

    # The dashboard: a batch's rows, the request's page, the search by token.
    (row, _) = await read_rows(redis, [key, idempotency_key(requests[1]["checkoutToken"])])
    assert (row.state, row.checkout_token, row.attempts) == ("created", token, "2")
    assert row.http_status == "201"
    page = await read_request(redis, key)
    assert page is not None
    assert (page.url, page.session_id, page.batch) == (
        SESSION[RecordField.URL],
        SESSION[RecordField.SESSION_ID],
        batch,
    )
    assert page.enqueued_at == str(enqueued_at)
    assert await find_by_token(redis, token) == key

    # A job run again finds it created, and the script moves it no more.
    again = await Outcomes(redis).move(record, State.IN_PROGRESS, new_attempt=True)
    assert again == 2
    assert not await redis.exists(checkout_key(key))
    assert await redis.get(result_key(key)) == result


async def test_a_token_sent_again_is_told_apart_from_another_request_by_its_digest(
    redis: Redis,
) -> None:
    requests = example_requests(1)
    batch = await enqueued(redis, requests)
    await created(redis, requests[0]["checkoutToken"])

    same = await producer(redis).enqueue(requests)
    assert (same.enqueued, same.duplicates, same.rejected) == (0, 1, [])
    assert same.duplicate_batches == {batch: 1}
    changed = json.loads(json.dumps(requests[0]))
    changed["items"][0]["description"] = "another request"
    other = await producer(redis).enqueue([changed])
    assert (other.enqueued, other.duplicates) == (0, 0)
    assert "different body" in other.rejected[0].error


async def test_a_created_request_with_sessions_to_invalidate_is_still_a_dead_letter(
    redis: Redis,
) -> None:
    requests = example_requests(1)
    batch = await enqueued(redis, requests)
    key = idempotency_key(requests[0]["checkoutToken"])
    await redis.zadd(layout.DEAD_LETTERS, {key: 1})
    reason = (
        "the API holds 2 sessions for this checkoutToken: kept cs_1, the oldest; invalidate cs_2"
    )
    await created(
        redis,
        requests[0]["checkoutToken"],
        **{RecordField.ERROR: reason, RecordField.DUPLICATE_SESSIONS: "cs_2"},
    )

    (letter,) = [letter async for letter in dead_letters(redis, batch=batch)]
    assert letter.record.duplicate_sessions == ("cs_2",)
    assert letter.as_json()["error"] == reason
    letters, _ = await letters_page(redis, batch, 0, 10)
    assert [(entry.key, entry.error) for entry in letters] == [(key, reason)]
    retried = await DeadLetters(redis, ProducerConfig()).retry(batch=batch)
    assert retried == {"retried": 0, "busy": 0}, "a created request is never sent again"


async def test_records_of_the_release_before_results_are_read_and_compared(
    redis: Redis,
) -> None:
    # A record created by the release before (its digest whole, in the hash) and one by the
    # release before that (its body kept), both in a batch of this release.
    requests = example_requests(2)
    batch = "earlier"
    now = int(time.time() * 1000)
    for request, kept in zip(requests, ("digest", "body"), strict=True):
        key = idempotency_key(request["checkoutToken"])
        body = orjson.dumps(request, option=orjson.OPT_SORT_KEYS).decode()
        record = {
            RecordField.CHECKOUT_TOKEN: request["checkoutToken"],
            RecordField.BATCH: batch,
            RecordField.STATE: State.CREATED,
            RecordField.ATTEMPTS: 1,
            RecordField.ENQUEUED_AT: now,
            RecordField.UPDATED_AT: now + 20,
            **SESSION,
        }
        if kept == "digest":
            record[RecordField.REQUEST_DIGEST] = hashlib.sha1(body.encode()).hexdigest()
        else:
            record[RecordField.REQUEST] = body
        await redis.hset(checkout_key(key), mapping=record)  # type: ignore[misc]
        await redis.rpush(layout.batch_members_key(batch), key)  # type: ignore[misc]

    rows = [row async for row in producer(redis).results(batch)]
    assert [(r["state"], r["url"]) for r in rows] == [("created", SESSION[RecordField.URL])] * 2
    same = await producer(redis).enqueue(requests)
    assert (same.enqueued, same.duplicates, same.rejected) == (0, 2, [])
    changed = json.loads(json.dumps(requests))
    for request in changed:
        request["items"][0]["description"] = "another request"
    other = await producer(redis).enqueue(changed)
    assert (other.enqueued, len(other.rejected)) == (0, 2)


async def test_a_failed_request_keeps_its_body_for_its_retry(redis: Redis) -> None:
    requests = example_requests(1)
    batch = await enqueued(redis, requests)
    key = idempotency_key(requests[0]["checkoutToken"])
    body = await redis.hget(checkout_key(key), RecordField.REQUEST)  # type: ignore[misc]
    record = await read_record(redis, key)
    assert record is not None
    await Outcomes(redis).move(record, State.FAILED, {RecordField.ERROR: "refused"})

    assert not await redis.exists(result_key(key))
    failed = await read_record(redis, key)
    assert failed is not None
    assert (failed.state, failed.request) == (State.FAILED, body)
    retried = await DeadLetters(redis, ProducerConfig()).retry(batch=batch)
    assert retried == {"retried": 1, "busy": 0}
    queued = await read_record(redis, key)
    assert queued is not None
    assert (queued.state, queued.request) == (State.QUEUED, body)


def test_a_result_reads_back_as_it_was_written() -> None:
    # Created within the millisecond it was enqueued, by a reconcile (no HTTP status).
    fields = {
        RecordField.BATCH: "b",
        RecordField.CHECKOUT_TOKEN: "INV-1",
        RecordField.ATTEMPTS: "1",
        RecordField.ENQUEUED_AT: "1764768549123",
        RecordField.UPDATED_AT: "1764768549123",
        RecordField.SESSION_ID: "cs_1",
        RecordField.URL: "https://pay.example.com/a\x1fb",
    }
    read = result_fields(result_value(fields))
    assert read == {
        **fields,
        RecordField.URL: "https://pay.example.com/a b",
        RecordField.STATE: "created",
    }


async def test_a_job_whose_request_is_created_while_it_waits_for_its_slot_skips_it(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    # A request whose last call went unanswered: its job looks for the session first, and
    # that look-up waits out a pause of the fleet's limiter. Meanwhile another run creates
    # the request, so its record is gone, become its result, when the job asks for its slot.
    requests = example_requests(1)
    await enqueued(redis, requests)
    key = idempotency_key(requests[0]["checkoutToken"])
    long_ago = int(time.time() * 1000) - 60_000
    unanswered = {"state": "retrying", "attempts": 1, "sent_at": long_ago, "updated_at": long_ago}
    await redis.hset(checkout_key(key), mapping=unanswered)  # type: ignore[misc]
    await redis.hset(layout.batch_key("results"), mapping={"queued": 0, "retrying": 1})  # type: ignore[misc]
    conomy = ConomyConfig(
        base_url=env["CONOMY_BASE_URL"],
        api_key=env["CONOMY_API_KEY"],
        access_token=env["CONOMY_ACCESS_TOKEN"],
    )
    seconds, micros = await redis.time()
    pause = layout.limiter_keys(credential_id(conomy)).pause
    await redis.set(pause, seconds * 1_000_000 + micros + 4_000_000, px=10_000)

    log = tmp_path / "worker.log"
    worker = spawn_worker({**env, "PAYLINKS_RECONCILE_DELAY": "0"}, log)
    with cleaned_up([worker]):
        deadline = time.monotonic() + 30
        while not await redis.exists(layout.arq_in_progress_key(key)):
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the job has read the record and waits for the pause
        assert await redis.exists(checkout_key(key))
        await created(redis, requests[0]["checkoutToken"])
        while not [e for e in log_events(log) if e["event"] in ENDED]:
            assert time.monotonic() < deadline, "the job never ended"
            await asyncio.sleep(0.05)
        worker.terminate()
        worker.wait(30)
    events = [(e["event"], e.get("state")) for e in log_events(log) if e["event"] in ENDED]
    assert events == [("checkout.skipped", "created")]
    assert (await sandbox.stats())["calls"] == 0
