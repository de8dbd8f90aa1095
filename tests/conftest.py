"""The tests' fixtures: a private redis-server and the sandbox API, on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.connection import connect
from tests.helpers import ACCESS_TOKEN, API_KEY, Sandbox


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    """The tests' own redis-server, which REDIS_URL names for the whole session, so that no
    test can reach a Redis it does not own (such as one on the default port)."""
    with RedisServer() as server:
        before = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = server.url
        yield server
        if before is None:
            del os.environ["REDIS_URL"]
        else:
            os.environ["REDIS_URL"] = before


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[Sandbox]:
    sandbox = Sandbox(free_port())
    wait_for_port(sandbox.port)
    yield sandbox
    sandbox.stop()


@pytest.fixture
async def sandbox(sandbox_process: Sandbox) -> Sandbox:
    await sandbox_process.control("POST", "reset")
    await sandbox_process.faults(
        latency_ms=0,
        error_rate=0,
        throttle_rate=0,
        slow_rate=0,
        retry_after=1,
        reject_prefix="",
        drop_rate=0,
        honour_idempotency_key=False,
        conflict_on_repeated_token=False,
    )
    return sandbox_process


@pytest.fixture
def env(redis_server: RedisServer, sandbox_process: Sandbox) -> dict[str, str]:
    """The environment of a paylinks process pointed at the test services."""
    return {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_server.url,
        "CONOMY_BASE_URL": sandbox_process.base_url,
        "CONOMY_API_KEY": API_KEY,
        "CONOMY_ACCESS_TOKEN": ACCESS_TOKEN,
        "PAYLINKS_RETRY_BASE": "0.05",
        "PAYLINKS_RETRY_CAP": "0.5",
        # Fault tests draw failures at random; enough tries that none runs out by chance.
        "PAYLINKS_MAX_TRIES": "20",
    }
