"""Liveness and readiness on a real worker's port, and `paylinks health` as Docker runs it."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from paylinks.devtools.ports import free_port
from paylinks.devtools.redis_server import RedisServer
from tests.helpers import Sandbox, enqueue, paylinks, unique_requests, write_requests
from tests.monitoring import (  # noqa: F401 - slow_sandbox, a fixture
    eventually,
    probe,
    scrape,
    series,
    slow_sandbox,
    worker_with_port,
)


def health(port: int | None, *args: str) -> tuple[int, str]:
    """`paylinks health`'s exit code and its one line (stdout when ready, stderr when not)."""
    env = {"PATH": ""} if port is None else {"PATH": "", "PAYLINKS_METRICS_PORT": str(port)}
    done = paylinks("health", *args, env=env, timeout=30)
    out = (done.stdout if done.returncode == 0 else done.stderr).decode()
    assert len(out.splitlines()) == 1, out
    return done.returncode, out.strip()


async def test_readiness_follows_redis_killed_and_started_again(
    env: dict[str, str], tmp_path: Path
) -> None:
    with RedisServer() as server:
        env = {**env, "REDIS_URL": server.url}
        with worker_with_port(env, tmp_path / "worker.log") as (_, port):
            assert await probe(port, "/readyz") == (200, "ready\n")
            assert health(port) == (0, "ready")

            server.kill()  # SIGKILL on the redis-server process

            async def unready() -> str | None:
                answer = await probe(port, "/readyz")
                return answer[1] if answer and answer[0] == 503 else None

            reason = await eventually(unready, "readiness false without Redis")
            assert f"redis at 127.0.0.1:{server.port} unreachable" in reason
            # Alive all the same: the loop answers.
            assert await probe(port, "/healthz") == (200, "alive\n")
            assert (await scrape(port))[series("paylinks_redis_up")] == 0
            code, line = health(port)
            assert code == 1
            assert line.startswith(f"paylinks: health: not ready: redis at 127.0.0.1:{server.port}")

            server.start()

            async def ready() -> bool | None:
                return True if await probe(port, "/readyz") == (200, "ready\n") else None

            await eventually(ready, "readiness true with Redis back")
            assert health(port) == (0, "ready")


async def test_readiness_false_while_draining_after_sigterm(
    slow_sandbox: Sandbox,  # noqa: F811
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {**env, "CONOMY_BASE_URL": slow_sandbox.base_url, "PAYLINKS_SHUTDOWN_GRACE": "20"}
    with worker_with_port(env, tmp_path / "worker.log", "--concurrency", "1") as (worker, port):
        enqueue(write_requests(tmp_path / "batch.jsonl", unique_requests(2, "DRAIN")), env)

        async def in_flight() -> bool | None:
            samples = await scrape(port)
            return True if samples[series("paylinks_api_requests_in_flight")] == 1 else None

        await eventually(in_flight, "a call in flight")
        assert await probe(port, "/readyz") == (200, "ready\n")

        worker.send_signal(signal.SIGTERM)

        async def draining() -> str | None:
            answer = await probe(port, "/readyz")
            return answer[1] if answer and answer[0] == 503 else None

        reason = await eventually(draining, "readiness false after SIGTERM")
        # Still draining: the held call keeps the worker for the grace (20 s) at least.
        assert worker.poll() is None
        assert reason == "not ready: draining after SIGTERM: taking no new job\n"
        assert await probe(port, "/healthz") == (200, "alive\n")
        code, line = health(port)
        assert (code, line) == (
            1,
            "paylinks: health: not ready: draining after SIGTERM: taking no new job",
        )

        worker.wait(60)
        assert worker.returncode == 0
        code, line = health(port)
        assert code == 1
        assert line.startswith(f"paylinks: health: no worker answers on 127.0.0.1:{port}")


def test_health_without_a_port_or_a_worker_exits_1_saying_why() -> None:
    assert health(None) == (
        1,
        "paylinks: health: PAYLINKS_METRICS_PORT is not set: the worker serves no health endpoint",
    )
    done = paylinks("health", env={"PATH": "", "PAYLINKS_METRICS_PORT": "http"}, timeout=30)
    assert done.returncode == 1
    assert done.stderr.decode().startswith(
        "paylinks: health: configuration error: PAYLINKS_METRICS_PORT:"
    )
    port = free_port()
    code, line = health(port, "--live")
    assert code == 1
    assert line.startswith(f"paylinks: health: no worker answers on 127.0.0.1:{port}")


def test_a_worker_whose_port_is_taken_exits_2_saying_so(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**env, "PAYLINKS_METRICS_PORT": str(port), "PAYLINKS_METRICS_HOST": "127.0.0.1"}
        done = paylinks("worker", "--burst", env=env, timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr.decode()
        .splitlines()[-1]
        .startswith(f"paylinks: cannot serve metrics on 127.0.0.1:{port} (PAYLINKS_METRICS_PORT): ")
    )
