"""The services a benchmark runs against: a private Redis and the sandbox API, in processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.devtools.redis_server import RedisServer


@dataclass
class Services:
    redis: RedisServer
    sandbox_port: int

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}/sandbox"

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a paylinks process pointed at these services."""
        return {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "CONOMY_BASE_URL": self.sandbox_url,
            "CONOMY_API_KEY": "sandbox-key",
            "CONOMY_ACCESS_TOKEN": "sandbox-token",
            "PAYLINKS_LOG_LEVEL": "INFO",
            **overrides,
        }

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.sandbox_url}/_control/{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def fresh(self, **faults: float | str) -> None:
        """An empty Redis and a reset sandbox with these fault knobs, for the next section."""
        from paylinks.jobs.connection import connect

        redis = connect(self.redis_url)
        await redis.flushall()
        await redis.aclose()
        await self.control("POST", "reset")
        knobs = {"latency_ms": 0, "error_rate": 0, "throttle_rate": 0, "slow_rate": 0}
        await self.control("POST", "faults", {**knobs, **faults})


@contextmanager
def running() -> Iterator[Services]:
    port = free_port()
    with RedisServer() as redis:
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "paylinks", "sandbox", "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield Services(redis, port)
        finally:
            sandbox.terminate()
            sandbox.wait(10)
