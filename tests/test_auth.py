"""Workers configured with credentials only: tokens from {base}/auth, renewed before they
expire, and credentials the endpoint refuses stop a worker at start, before any job."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.jobs.layout import QUEUE
from tests.helpers import (
    API_KEY,
    CLIENT_ID,
    CLIENT_SECRET,
    Sandbox,
    enqueue,
    run_workers,
    start_worker,
    stop_worker,
    unique_requests,
    write_requests,
)


@pytest.fixture
def short_lived_tokens() -> Iterator[Sandbox]:
    """A sandbox of its own whose tokens live 3 seconds."""
    sandbox = Sandbox(free_port(), "--token-ttl", "3")
    wait_for_port(sandbox.port)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def other_credentials() -> Iterator[Sandbox]:
    """A sandbox of its own that knows another client id and API key than the workers'."""
    sandbox = Sandbox(free_port(), "--client-id", "another-client", "--api-key", "another-key")
    wait_for_port(sandbox.port)
    yield sandbox
    sandbox.stop()


def credentials_env(redis_url: str, sandbox: Sandbox) -> dict[str, str]:
    """A worker's environment with the reference's credentials and no token."""
    return {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "CONOMY_BASE_URL": sandbox.base_url,
        "CONOMY_API_KEY": API_KEY,
        "CONOMY_CLIENT_ID": CLIENT_ID,
        "CONOMY_CLIENT_SECRET": CLIENT_SECRET,
    }


async def test_tokens_are_renewed_before_they_expire_and_no_call_is_refused(
    redis: Redis, short_lived_tokens: Sandbox, tmp_path: Path
) -> None:
    env = credentials_env(os.environ["REDIS_URL"], short_lived_tokens)
    # 5 calls a second for 40 requests: the batch outlives several 3-second tokens.
    env |= {"PAYLINKS_RATE_LIMIT": "5", "PAYLINKS_RATE_BURST": "1", "PAYLINKS_MAX_TRIES": "1"}
    path = write_requests(tmp_path / "requests.jsonl", unique_requests(40, "AUTH"))
    assert enqueue(path, env)["enqueued"] == 40
    logs = run_workers(env, 2)
    stats = await short_lived_tokens.stats()
    assert stats["by_status"] == {"201": 40}, stats["by_status"]  # not one 401
    assert stats["sessions"] == 40
    assert stats["tokens_issued"] >= 3
    # One fleet: the workers shared each token instead of fetching one each.
    renewals = sum(log.count('"auth.token_renewed"') for log in logs)
    assert renewals == stats["tokens_issued"]
    for log in logs:
        assert CLIENT_SECRET not in log


@pytest.mark.parametrize(
    ("changes", "named", "status"),
    [
        ({"CONOMY_API_KEY": "another-key"}, "CONOMY_CLIENT_ID/CONOMY_CLIENT_SECRET", 401),
        ({}, "CONOMY_API_KEY or CONOMY_CLIENT_ID/CONOMY_CLIENT_SECRET", 403),
    ],
)
async def test_refused_credentials_stop_the_worker_at_start_before_any_job(
    redis: Redis,
    other_credentials: Sandbox,
    tmp_path: Path,
    changes: dict[str, str],
    named: str,
    status: int,
) -> None:
    env = credentials_env(os.environ["REDIS_URL"], other_credentials) | changes
    path = write_requests(tmp_path / "requests.jsonl", unique_requests(3, "REFUSED"))
    assert enqueue(path, env)["enqueued"] == 3

    worker = start_worker(env)  # a long-running worker: it must stop by itself
    worker.wait(60)
    stderr = stop_worker(worker)
    assert worker.returncode == 2
    expected = (
        f"paylinks: configuration error: {named} rejected by {other_credentials.base_url}/auth "
        f"({status})"
    )
    assert expected in stderr.splitlines()
    assert CLIENT_SECRET not in stderr
    stats = await other_credentials.stats()
    assert (stats["calls"], stats["tokens_issued"]) == (0, 0)
    assert await redis.zcard(QUEUE) == 3  # every job still there, no attempt spent
