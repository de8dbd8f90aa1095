"""What a look-up costs when the owner has 10,000 sessions that day: pages of 100, read
newest first until one reaches past the unanswered attempt, each a GET in a rate-limit slot.
Measured on the sandbox over HTTP with the worker's own client and limiter; the README's
figures come from here (`pytest tests/test_reconcile_cost.py -s` prints them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pydantic import AnyHttpUrl, SecretStr
from redis.asyncio import Redis

from paylinks.devtools.sandbox import build_app
from paylinks.devtools.sandbox_options import SandboxOptions
from paylinks.worker.auth import StaticToken
from paylinks.worker.config import ConomyConfig
from paylinks.worker.conomy import ConomyClient
from paylinks.worker.ratelimit import Limiter, RateLimit
from paylinks.worker.reconcile import find_sessions
from tests.helpers import ACCESS_TOKEN, API_KEY, example_requests

SESSIONS = 10_000
OWNER = example_requests(1)[0]["owner"]["identityId"]


@pytest.fixture
async def client() -> AsyncIterator[ConomyClient]:
    async with TestServer(build_app(SandboxOptions())) as server, aiohttp.ClientSession() as http:
        config = ConomyConfig(
            base_url=AnyHttpUrl(str(server.make_url("/sandbox"))),
            api_key=SecretStr(API_KEY),
            access_token=SecretStr(ACCESS_TOKEN),
        )
        yield ConomyClient(config, http, StaticToken(ACCESS_TOKEN))


async def make_sessions(client: ConomyClient, count: int) -> None:
    """`count` sessions of one owner, a hundred calls at a time."""
    request = example_requests(1)[0]
    for start in range(0, count, 100):
        calls = []
        for i in range(start, min(start + 100, count)):
            body = {**request, "checkoutToken": f"DAY-{i:05d}"}
            calls.append(client.create_checkout_session(orjson.dumps(body), f"k{i}"))
        answers = await asyncio.gather(*calls)
        assert {a.status for a in answers} == {201}


async def lookups(
    client: ConomyClient, redis: Redis, token: str, since: datetime
) -> tuple[int, int]:
    limiter = Limiter(redis, "cost", RateLimit(rate=0))
    found = await find_sessions(
        client, limiter, owner=OWNER, checkout_token=token, since=since, max_wait=1
    )
    return found.lookups, len(found.sessions)


async def test_look_ups_per_ambiguous_outcome_among_10000_sessions_of_one_owner(
    redis: Redis, client: ConomyClient
) -> None:
    before = datetime.now(UTC) - timedelta(minutes=1)
    await make_sessions(client, SESSIONS)
    after = datetime.now(UTC) + timedelta(minutes=1)

    # The attempt came before every one of the day's sessions (the worst case): every page.
    worst_missing = await lookups(client, redis, "NOT-MADE", before)
    worst_found = await lookups(client, redis, "DAY-00000", before)
    # The attempt came after them all: the first page already reaches past it.
    best = await lookups(client, redis, "NOT-MADE", after)
    print(f"\nlook-ups among {SESSIONS} sessions: worst {worst_missing[0]}, best {best[0]}")
    assert worst_missing == (SESSIONS // 100, 0)
    assert worst_found == (SESSIONS // 100, 1)
    assert best == (1, 0)
