"""`paylinks demo`: a whole batch end to end on a private Redis, the sandbox and two workers."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from paylinks.devtools.ports import free_port, wait_for_port
from paylinks.devtools.redis_server import RedisServer
from paylinks.jobs.intake import read_json_lines
from paylinks.jobs.logs import configure
from paylinks.jobs.producer import Producer
from paylinks.jobs.records import RESULT_COLUMNS
from paylinks.worker.progress import watch

RESULTS = Path("results")
# A sandbox that misbehaves a little, so the demo shows retries as well as links.
SANDBOX_FAULTS = ["--latency-ms", "40", "--error-rate", "0.05", "--throttle-rate", "0.03"]


def run_demo(file: str, *, workers: int = 2) -> int:
    RESULTS.mkdir(exist_ok=True)
    log_path = RESULTS / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with ExitStack() as stack:
        if not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = stack.enter_context(RedisServer()).url
            print(f"started a private redis-server at {os.environ['REDIS_URL']}")
        port = free_port()
        os.environ.update(
            CONOMY_BASE_URL=f"http://127.0.0.1:{port}/sandbox",
            CONOMY_API_KEY="sandbox-key",
            # Credentials, as production has them: the workers ask the sandbox's /auth for tokens.
            CONOMY_CLIENT_ID="sandbox-client",
            CONOMY_CLIENT_SECRET="sandbox-secret",
        )
        # Its workers share this host, and one port would serve only the first of them.
        os.environ.pop("PAYLINKS_METRICS_PORT", None)
        log = stack.enter_context(open(log_path, "ab"))
        sandbox = ["sandbox", "--port", str(port), *SANDBOX_FAULTS]
        stack.callback(_stop, [_spawn(sandbox, log)])
        wait_for_port(port)
        print(f"sandbox API on http://127.0.0.1:{port}/sandbox, starting {workers} workers")
        stack.callback(_stop, [_spawn(["worker"], log) for _ in range(workers)])
        failed = asyncio.run(_enqueue_and_watch(file))
    print(f"logs: {log_path}")
    return 1 if failed else 0


def _spawn(command: list[str], log: BinaryIO) -> subprocess.Popen[bytes]:
    # A session of its own, as Redis's: Ctrl-C reaches the demo alone, which stops the
    # workers before the sandbox and Redis they need to finish.
    return subprocess.Popen(
        [sys.executable, "-m", "paylinks", *command], stderr=log, start_new_session=True
    )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


async def _enqueue_and_watch(file: str) -> int:
    configure("WARNING")
    async with Producer.connect() as producer:
        with open(file, "rb") as lines:
            requests = read_json_lines(lines, producer.config.default_duration)
            report = await producer.enqueue_numbered(requests)
        print(
            f"batch {report.batch}: enqueued {report.enqueued}, "
            f"duplicates {report.duplicates}, rejected {len(report.rejected)}"
        )
        for rejection in report.rejected:
            print(f"  line {rejection.line}: {rejection.error}")
        started = time.monotonic()
        status = await watch(producer, report.batch)
        elapsed = time.monotonic() - started
        path = RESULTS / f"{report.batch}.csv"
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, RESULT_COLUMNS)
            writer.writeheader()
            async for row in producer.results(report.batch):
                writer.writerow(row)
    print(
        f"done in {elapsed:.1f}s: {status['created']} payment links created, "
        f"{status['failed']} failed, of {status['total']}"
    )
    print(f"results: {path}")
    failed: int = status["failed"]
    return failed
