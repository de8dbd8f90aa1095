"""Real services for the tests: a private redis-server and the sandbox API, on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from paylinks.jobs.connection import connect
from paylinks.worker.ports import free_port, wait_for_port
from paylinks.worker.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ACCESS_TOKEN = "sandbox-token"
API_KEY = "sandbox-key"


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


class Sandbox:
    """The sandbox API in its own process, driven through its control endpoints."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/sandbox"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "paylinks", "sandbox", "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.base_url}/_control/{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.control("GET", "stats")
        return stats

    async def faults(self, **knobs: float | str) -> None:
        await self.control("POST", "faults", knobs)

    async def requests(self, limit: int = 10) -> list[dict[str, Any]]:
        answer = await self.control("GET", f"requests?limit={limit}")
        requests: list[dict[str, Any]] = answer["requests"]
        return requests


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[Sandbox]:
    sandbox = Sandbox(free_port())
    wait_for_port(sandbox.port)
    yield sandbox
    sandbox.process.terminate()
    sandbox.process.wait(10)


@pytest.fixture
async def sandbox(sandbox_process: Sandbox) -> Sandbox:
    await sandbox_process.control("POST", "reset")
    await sandbox_process.faults(
        latency_ms=0, error_rate=0, throttle_rate=0, slow_rate=0, retry_after=1, reject_prefix=""
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


def paylinks(
    *args: str, env: dict[str, str], input: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the `paylinks` command as a separate process, as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "paylinks", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """A worker whose log (stderr) is read from a pipe: for short runs that are read as they end."""
    return subprocess.Popen(
        [sys.executable, "-m", "paylinks", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def spawn_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A worker whose log goes to a file: a pipe nobody reads would fill up and stall a
    long-running worker (and so what a test measures), and a file keeps what a killed
    worker wrote."""
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "paylinks", "worker", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> str:
    """SIGTERM a worker started with `start_worker`; its log."""
    if worker.poll() is None:
        worker.terminate()
    try:
        _, stderr = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, stderr = worker.communicate(timeout=10)
    return stderr.decode()


def log_events(*logs: Path) -> list[dict[str, Any]]:
    """Every JSON log line of the given files; a line cut short by SIGKILL is skipped."""
    found = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found
