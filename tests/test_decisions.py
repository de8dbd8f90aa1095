"""The job's decisions, in-process on the tests' Redis: which answer of the API leads to which
state, reason and backoff. The job function runs as arq would call it, with the worker's own
start-up, against a tiny API over real HTTP that gives each call the answer a test scripts."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from arq import Retry
from pydantic import AnyHttpUrl, SecretStr
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port
from paylinks.jobs import layout
from paylinks.jobs.deadletters import dead_letters
from paylinks.jobs.producer import Producer
from paylinks.jobs.records import Record, read_record
from paylinks.worker.app import shutdown, startup
from paylinks.worker.auth import credential_id
from paylinks.worker.config import ConomyConfig, WorkerConfig
from paylinks.worker.tasks import create_checkout_session
from tests.helpers import example_requests

SESSION = {"id": "cs_1", "url": "https://pay.example/cs_1", "expiresAt": "2026-12-01T00:00:00Z"}
REFUSED = {
    "status": 400,
    "code": "11",
    "type": "invalidParam",
    "detail": "owner unknown",
    "traceId": "trace-400",
}
TOKEN = example_requests(1)[0]["checkoutToken"]
OWNER = example_requests(1)[0]["owner"]["identityId"]
# Backoff windows of 50 ms, calls given up after 0.3 s, looked up as soon as they are given up.
SETTINGS: dict[str, Any] = {
    "retry_base": 0.05,
    "retry_cap": 0.5,
    "http_timeout": 0.3,
    "reconcile_delay": 0,
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    delay: float = 0

    def response(self) -> web.Response:
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        return web.Response(status=self.status, body=body, headers=self.headers)


class Api:
    """A checkout-sessions endpoint that gives each call the next scripted answer."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}/api"
        self.answers: deque[Answer] = deque()
        self.calls = 0
        # The sessions the list answers with, newest first, and the queries it was asked.
        self.listed: list[dict[str, Any]] = []
        self.queries: list[dict[str, str]] = []

    async def checkout(self, request: web.Request) -> web.Response:
        self.calls += 1
        await request.read()
        answer = self.answers.popleft()
        await asyncio.sleep(answer.delay)
        return answer.response()

    async def sessions(self, request: web.Request) -> web.Response:
        """The reference's list, one page of `limit` from `offset`."""
        self.queries.append(dict(request.query))
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        page = self.listed[offset : offset + limit]
        following = offset + limit if offset + limit < len(self.listed) else None
        pagination = {"count": len(page), "next": following, "total": len(self.listed)}
        return web.json_response({"pagination": pagination, "results": page})


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    port = free_port()
    api = Api(port)
    app = web.Application()
    app.router.add_post("/api/checkout-sessions", api.checkout)
    app.router.add_get("/api/checkout-sessions", api.sessions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield api
    await runner.cleanup()


class Job:
    """One enqueued checkout request and its job, run as arq runs it."""

    def __init__(self, ctx: dict[str, Any], key: str) -> None:
        self.ctx, self.key = ctx, key

    async def run(self) -> str:
        self.ctx["job_try"] = self.ctx.get("job_try", 0) + 1
        return await create_checkout_session(self.ctx, self.key)

    async def retried(self) -> int:
        """Run the job, which must ask arq for another attempt; the delay asked, in ms."""
        with pytest.raises(Retry) as retry:
            await self.run()
        assert retry.value.defer_score is not None
        return retry.value.defer_score

    async def record(self) -> Record:
        record = await read_record(self.ctx["paylinks"].redis, self.key)
        assert record is not None
        return record


@asynccontextmanager
async def checkout_job(api: Api, **settings: Any) -> AsyncIterator[Job]:
    ctx: dict[str, Any] = {
        "config": WorkerConfig(**{**SETTINGS, **settings}),
        "conomy": ConomyConfig(
            base_url=AnyHttpUrl(api.base_url),
            api_key=SecretStr("key"),
            access_token=SecretStr("token"),
        ),
    }
    await startup(ctx)
    try:
        request = example_requests(1)[0]
        report = await Producer(ctx["paylinks"].redis, ctx["config"]).enqueue([request])
        assert report.enqueued == 1
        yield Job(ctx, layout.idempotency_key(request["checkoutToken"]))
    finally:
        await shutdown(ctx)


async def dead_letter(redis: Redis, key: str) -> bool:
    return await redis.zscore(layout.DEAD_LETTERS, key) is not None


async def test_a_201_with_a_session_is_created(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(201, SESSION))
    async with checkout_job(api) as job:
        assert await job.run() == "created"
        record = await job.record()
    assert (record.state, record.attempts, record.http_status) == ("created", 1, 201)
    assert (record.session_id, record.url, record.error) == ("cs_1", SESSION["url"], None)
    assert api.calls == 1


async def test_a_500_is_retried_after_a_backoff(redis: Redis, api: Api) -> None:
    api.answers.append(
        Answer(500, {"statusCode": 500, "error": "Internal", "message": "try later"})
    )
    async with checkout_job(api) as job:
        assert 0 <= await job.retried() <= 50
        record = await job.record()
        credential = credential_id(job.ctx["conomy"])
    assert (record.state, record.attempts, record.http_status) == ("retrying", 1, 500)
    assert record.error == "try later"
    assert not await redis.exists(layout.limiter_keys(credential).pause)


async def test_a_429_waits_its_retry_after_and_pauses_the_whole_fleet(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(429, {"message": "slow down"}, {"Retry-After": "2"}))
    async with checkout_job(api) as job:
        assert 2000 <= await job.retried() <= 2050
        record = await job.record()
        credential = credential_id(job.ctx["conomy"])
    assert (record.state, record.http_status, record.error) == ("retrying", 429, "slow down")
    assert 1000 < await redis.pttl(layout.limiter_keys(credential).pause) <= 2000


async def test_a_400_fails_at_once_with_the_apis_message_in_a_dead_letter(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(400, REFUSED))
    async with checkout_job(api) as job:
        assert await job.run() == "failed"
        record = await job.record()
    assert (record.state, record.attempts, record.http_status) == ("failed", 1, 400)
    assert record.error == "owner unknown"
    assert (record.error_code, record.error_type, record.trace_id) == (
        "11",
        "invalidParam",
        "trace-400",
    )
    assert record.response == orjson.dumps(REFUSED).decode()
    assert await dead_letter(redis, job.key)
    assert api.calls == 1


async def test_no_answer_in_time_is_retried(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        assert 0 <= await job.retried() <= 50
        record = await job.record()
    assert (record.state, record.attempts, record.error) == ("retrying", 1, "timeout")
    assert record.http_status is None


async def test_the_last_allowed_attempt_fails_for_good(redis: Redis, api: Api) -> None:
    api.answers.extend([Answer(500, {"message": "down"}), Answer(503, {"message": "down"})])
    async with checkout_job(api, max_tries=2) as job:
        await job.retried()
        assert await job.run() == "failed"
        record = await job.record()
    assert (record.state, record.attempts, record.http_status) == ("failed", 2, 503)
    assert record.error == "down (after 2 attempts)"
    assert await dead_letter(redis, job.key)


async def test_an_unreadable_2xx_fails_and_is_never_sent_again(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(201, b"<html>created</html>"))
    async with checkout_job(api) as job:
        assert await job.run() == "failed"
        assert await job.run() == "failed"
        record = await job.record()
    assert (record.state, record.attempts, record.http_status) == ("failed", 1, 201)
    assert record.error == "the API answered 201 but not with a readable checkout session"
    assert record.response == "<html>created</html>"
    assert await dead_letter(redis, job.key)
    assert api.calls == 1


def listed(session_id: str, created: datetime, token: str = TOKEN) -> dict[str, Any]:
    """A session as the API lists it."""
    return {
        "id": session_id,
        "checkoutToken": token,
        "url": f"https://pay.example/{session_id}",
        "createdAt": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "expiresAt": "2026-12-01T00:00:00Z",
        "status": "ACTIVE",
    }


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_501_unimplemented_is_not_retried(redis: Redis, api: Api) -> None:
    body = {"status": 501, "code": "42", "type": "unimplemented", "detail": "no", "traceId": "t"}
    api.answers.append(Answer(501, body))
    async with checkout_job(api) as job:
        assert await job.run() == "failed"
        record = await job.record()
    assert (record.state, record.error_type, record.error_code) == ("failed", "unimplemented", "42")
    assert api.calls == 1


async def test_too_many_requests_by_its_code_pauses_the_fleet(redis: Redis, api: Api) -> None:
    # Branch on the code, as the provider asks: a 400 that says tooManyRequests is one.
    body = {
        "status": 429,
        "code": "32",
        "type": "tooManyRequests",
        "detail": "slow",
        "traceId": "t",
    }
    api.answers.append(Answer(400, body, {"Retry-After": "1"}))
    async with checkout_job(api) as job:
        await job.retried()
        credential = credential_id(job.ctx["conomy"])
    assert await redis.pttl(layout.limiter_keys(credential).pause) > 0


async def test_an_older_error_body_is_read_too(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(422, {"statusCode": 422, "error": "Unprocessable", "message": "no"}))
    async with checkout_job(api) as job:
        assert await job.run() == "failed"
        record = await job.record()
    assert (record.error, record.http_status, record.error_type) == ("no", 422, None)


async def test_a_409_already_exist_finds_the_session_and_is_created(redis: Redis, api: Api) -> None:
    conflict = {"status": 409, "code": "13", "type": "alreadyExist", "detail": "exists"}
    api.answers.append(Answer(409, conflict))
    api.listed = [listed("cs_other", now(), token="INV-SOMEONE-ELSE"), listed("cs_made", now())]
    async with checkout_job(api) as job:
        assert await job.run() == "created"
        record = await job.record()
    assert (record.state, record.session_id, record.url) == (
        "created",
        "cs_made",
        "https://pay.example/cs_made",
    )
    assert (record.error, record.sent_at_ms, record.duplicate_sessions) == (None, None, ())
    assert (api.calls, len(api.queries)) == (1, 1)
    query = api.queries[0]
    assert (query["identityId"], query["sort"], query["offset"]) == (OWNER, "createdAt:desc", "0")
    # Dates around the attempt, a day wider each side for the API's unnamed time zone.
    today = now()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    assert query["startDate"] in (
        yesterday.strftime("%d/%m/%Y"),
        (yesterday - timedelta(days=1)).strftime("%d/%m/%Y"),
    )
    assert query["endDate"] == tomorrow.strftime("%d/%m/%Y")


async def test_after_a_timeout_the_session_found_is_created_without_a_second_post(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        await job.retried()
        assert (await job.record()).sent_at_ms is not None
        # The API made the session although its answer never came.
        api.listed = [listed("cs_1", now())]
        assert await job.run() == "created"
        record = await job.record()
    assert (record.state, record.session_id, record.attempts) == ("created", "cs_1", 1)
    assert api.calls == 1
    assert len(api.queries) == 1


async def test_after_a_timeout_the_look_up_waits_until_the_call_can_no_longer_arrive(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api, reconcile_delay=30) as job:
        await job.retried()
        # Run again at once (as after a short backoff): neither looked up nor posted, but
        # deferred to the delay after the call was given up.
        deferred_ms = await job.retried()
        record = await job.record()
    assert (api.calls, api.queries) == (1, [])
    assert (record.state, record.attempts) == ("retrying", 1)
    assert 25_000 < deferred_ms <= 30_000


async def test_after_a_timeout_a_session_not_found_is_posted_again(redis: Redis, api: Api) -> None:
    api.answers.extend([Answer(201, SESSION, delay=1.0), Answer(201, SESSION)])
    async with checkout_job(api) as job:
        await job.retried()
        api.listed = [listed("cs_other", now(), token="INV-SOMEONE-ELSE")]
        assert await job.run() == "created"
        record = await job.record()
    assert (record.state, record.attempts, record.sent_at_ms) == ("created", 2, None)
    assert (api.calls, len(api.queries)) == (2, 1)


async def test_two_sessions_found_keep_the_oldest_and_name_both_in_a_dead_letter(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        await job.retried()
        api.listed = [listed("cs_newer", now()), listed("cs_older", now() - timedelta(seconds=1))]
        assert await job.run() == "created"
        record = await job.record()
        letters = [letter.as_json() async for letter in dead_letters(redis)]
    assert (record.state, record.session_id, record.duplicate_sessions) == (
        "created",
        "cs_older",
        ("cs_newer",),
    )
    assert record.error == (
        "the API holds 2 sessions for this checkoutToken: kept cs_older, the oldest; "
        "invalidate cs_newer"
    )
    assert [letter["duplicateSessions"] for letter in letters] == [["cs_newer"]]
    assert api.calls == 1


async def test_the_look_up_stops_at_the_page_that_reaches_past_the_attempt(
    redis: Redis, api: Api
) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        await job.retried()
        # 250 newer sessions, then the day's older ones: pages of 100 reach past the attempt
        # on the third, so the fourth and later are never asked for.
        newer = [listed(f"cs_new_{i}", now(), token=f"T{i}") for i in range(249)]
        older = [
            listed(f"cs_old_{i}", now() - timedelta(hours=1), token=f"O{i}") for i in range(500)
        ]
        api.listed = [*newer, listed("cs_1", now()), *older]
        assert await job.run() == "created"
    assert [q["offset"] for q in api.queries] == ["0", "100", "200"]


async def test_a_session_seen_on_two_pages_is_one_session(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        await job.retried()
        # A session made between two pages pushes the first page's last onto the second.
        others = [listed(f"cs_{i}", now(), token=f"T{i}") for i in range(99)]
        api.listed = [*others, listed("cs_1", now()), listed("cs_1", now())]
        assert await job.run() == "created"
        record = await job.record()
    assert (record.session_id, record.duplicate_sessions) == ("cs_1", ())
    assert await redis.zcard(layout.DEAD_LETTERS) == 0


async def test_with_reconciliation_off_a_timeout_is_posted_again_unseen(
    redis: Redis, api: Api
) -> None:
    api.answers.extend([Answer(201, SESSION, delay=1.0), Answer(201, SESSION)])
    async with checkout_job(api, reconcile=False) as job:
        await job.retried()
        assert await job.run() == "created"
    assert (api.calls, api.queries) == (2, [])


async def test_a_failed_look_up_posts_nothing_and_counts_an_attempt(redis: Redis, api: Api) -> None:
    api.answers.append(Answer(201, SESSION, delay=1.0))
    async with checkout_job(api) as job:
        await job.retried()
        api.listed = [{"not": "a session"}]
        await job.retried()
        record = await job.record()
    assert (record.state, record.attempts) == ("retrying", 2)
    assert record.error == "look-up: listing sessions: not a page of sessions"
    assert record.sent_at_ms is not None
    assert api.calls == 1
