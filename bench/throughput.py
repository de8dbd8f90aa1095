"""Worker throughput and cost per request: paylinks with every guarantee on, side by side with
the plainest ways to make the same calls.

One process per contender, all at concurrency 100 against the sandbox at 20 ms latency with no
faults, on the same bodies with the same headers:
- (a) naive: `bench.contenders.naive`, asyncio + aiohttp, a semaphore and one ClientSession;
- (b) plain arq: `bench.contenders.plain_arq`, arq's defaults, a job that only posts the body;
- (c) paylinks: `python -m worker worker --burst --concurrency 100`, the rate limiter on (set
  to 100,000/s) and its INFO log events written to a file (logging is part of the cost);
- (c2): two paylinks processes on the same queue.
All of them run on uvloop, as paylinks' CLI does. The queues are filled before the contender
starts and not timed. Each contender runs once per round, rounds interleave them so that the
noise of a shared box falls on all alike, and ratios are taken within a round, then the median.
Before each run the benchmark waits (up to 20 s; quick: 2 s) for the machine to go quiet, and
it records the cores other tenants kept busy during the run, and those the host stole (steal time).

The rate is the requests divided by the time between the first and the last call the sandbox
saw, so process start-up and arq's burst exit stay out of it (the wall time is kept too).
CPU seconds come from `wait4` on each contender's own processes, peak RSS from their VmHWM;
CPU per 1,000 requests is what the run took beyond the same contender started on an empty
queue. Redis figures are `INFO` deltas around the timed phase: read events (the round
trips), commands (those run inside Lua scripts included), Redis CPU; memory per stored result
is paylinks' `used_memory` after the run less before its enqueue, over the requests.

`python -m bench.throughput profile [COUNT]` records the paylinks worker draining COUNT
requests with py-spy and prints the functions it spent the most time in.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import structlog

from bench.children import reap as reap_child
from bench.contenders import plain_arq, wire_bodies, write_bodies
from bench.services import Services
from paylinks.jobs import layout
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.connection import connect
from paylinks.jobs.logs import configure
from paylinks.jobs.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
LATENCY_MS = 20
CONCURRENCY = 100
# The limiter stays on (one script call per job), set so high that it never holds a call back.
RATE_LIMIT = "100000"
PAYLINKS = [sys.executable, "-m", "paylinks", "worker", "--burst"]
TARGETS = {"c/b": 1.2, "c/a": 0.5}
# Redis round trips per request and bytes per retained created result, paylinks at most.
ROUND_TRIPS_TARGET = 7
BYTES_TARGET = 500
# Before each run, wait up to this long (quick, full) for other tenants of the machine to
# leave it under QUIET_CORES busy: their load is the largest source of noise here.
QUIET_WAIT_S = {True: 2.0, False: 20.0}
QUIET_CORES = 0.3


@dataclass
class Usage:
    """What one contender's processes used: wall time, CPU seconds, the largest peak RSS."""

    wall: float
    cpu: float
    rss_mb: float
    cpu_kernel: float = 0.0


@dataclass
class Run:
    contender: str
    requests: int
    usage: Usage
    api_span: float
    answers: dict[str, int]
    redis: dict[str, Any] = field(default_factory=dict)
    sandbox_cpu: float = 0.0
    log_lines: int = 0
    memory_per_result: float | None = None
    # What each retained created result holds, by MEMORY USAGE (bytes), and arq keys left.
    retained: dict[str, float] = field(default_factory=dict)
    # Cores busy outside this benchmark's processes during the run, on average: other tenants.
    others_cores: float = 0.0
    # Cores the hypervisor gave other machines while this one wanted them (steal time): the
    # host's other tenants, whom `others_cores` cannot see.
    stolen_cores: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.api_span if self.api_span > 0 else 0.0


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The producer's per-request log events, off while this process enqueues (then restored)."""
    saved = structlog.get_config()
    configure("WARNING")
    try:
        yield
    finally:
        structlog.configure(**saved)


def spawn(command: list[str], env: dict[str, str], stderr: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)


async def reap(processes: list[subprocess.Popen[bytes]], started: float) -> Usage:
    """Wait for every process; their wall time (to the last exit), CPU and largest peak RSS."""

    async def one(process: subprocess.Popen[bytes]) -> tuple[float, float, float]:
        ended = await asyncio.to_thread(reap_child, process.pid)
        process.returncode = ended.returncode
        if process.returncode != 0:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        return ended.cpu, ended.usage.ru_stime, ended.peak_rss_mb

    measured = await asyncio.gather(*(one(p) for p in processes))
    wall = time.monotonic() - started
    cpu, kernel = sum(m[0] for m in measured), sum(m[1] for m in measured)
    return Usage(wall, cpu, max(m[2] for m in measured), kernel)


def sandbox_process(services: Services) -> psutil.Process | None:
    port = str(services.sandbox_port)
    for child in psutil.Process().children(recursive=True):
        try:
            if "sandbox" in child.cmdline() and port in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def stolen_cpu() -> float:
    """CPU seconds the hypervisor ran something else while this machine had work (steal)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


async def wait_for_quiet(limit_s: float, window_s: float = 0.5) -> float:
    """Wait until the machine is busy under QUIET_CORES (nothing of ours runs now), or
    `limit_s` passed; the cores last seen busy."""
    deadline = time.monotonic() + limit_s
    while True:
        before = busy_cpu()
        await asyncio.sleep(window_s)
        busy = (busy_cpu() - before) / window_s
        if busy < QUIET_CORES or time.monotonic() >= deadline:
            return busy


def cpu_of(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


async def redis_snapshot(services: Services) -> dict[str, Any]:
    redis = connect(services.redis_url)
    try:
        commands = await redis.info("commandstats")
        stats = await redis.info("stats")
        cpu = await redis.info("cpu")
        memory = await redis.info("memory")
    finally:
        await redis.aclose()
    return {
        "commands": {name.removeprefix("cmdstat_"): c["calls"] for name, c in commands.items()},
        "reads": stats["total_reads_processed"],
        "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        "memory": memory["used_memory"],
    }


def redis_delta(before: dict[str, Any], after: dict[str, Any], requests: int) -> dict[str, Any]:
    # The two INFO snapshots are the only other commands in between: 4 + 4 read events.
    commands = Counter(after["commands"])
    commands.subtract(before["commands"])
    commands = +commands
    return {
        "round_trips_per_request": round((after["reads"] - before["reads"] - 8) / requests, 2),
        "commands_per_request": round(sum(commands.values()) / requests, 2),
        "top_commands_per_request": {
            name: round(calls / requests, 2) for name, calls in commands.most_common(8)
        },
        "cpu_s_per_1000": round((after["cpu"] - before["cpu"]) / requests * 1000, 3),
    }


async def sandbox_calls(services: Services) -> tuple[int, float, dict[str, int]]:
    stats = await services.control("GET", "stats")
    times = stats["call_times"]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return stats["calls"], span, dict(stats["by_status"])


class Bench:
    def __init__(self, services: Services, count: int, folder: Path, quiet_s: float = 0) -> None:
        self.services = services
        self.quiet_s = quiet_s
        self.count = count
        self.folder = folder
        self.pairs = wire_bodies(count, "TPUT")
        self.bodies = write_bodies(folder / "bodies.tsv", self.pairs)
        self.empty = write_bodies(folder / "empty.tsv", [])
        self.sandbox = sandbox_process(services)
        self.url = f"{services.sandbox_url}/checkout-sessions"

    def env(self) -> dict[str, str]:
        return self.services.env(PAYLINKS_RATE_LIMIT=RATE_LIMIT)

    async def measure(
        self, contender: str, commands: list[list[str]], requests: int, log: Path | None = None
    ) -> Run:
        """Run the contender's processes to their end; what they did and what it cost."""
        if requests:
            await wait_for_quiet(self.quiet_s)
        before = await redis_snapshot(self.services)
        sandbox_before = cpu_of(self.sandbox)
        machine_before, own_before = busy_cpu(), cpu_of(psutil.Process())
        stolen_before = stolen_cpu()
        stderr = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            started = time.monotonic()
            processes = [spawn(command, self.env(), stderr) for command in commands]
            usage = await reap(processes, started)
        finally:
            if log:
                stderr.close()  # type: ignore[union-attr]
        for process in processes:
            assert process.stdout is not None
            process.stdout.close()
        machine, own = busy_cpu() - machine_before, cpu_of(psutil.Process()) - own_before
        sandbox = cpu_of(self.sandbox) - sandbox_before
        after = await redis_snapshot(self.services)
        ours = usage.cpu + sandbox + own + after["cpu"] - before["cpu"]
        calls, span, answers = await sandbox_calls(self.services)
        if calls != requests or answers.get("201", 0) != requests:
            raise RuntimeError(f"{contender}: {requests} requests but the sandbox saw {answers}")
        run = Run(contender, requests, usage, span, answers)
        run.others_cores = max(0.0, machine - ours) / usage.wall
        run.stolen_cores = (stolen_cpu() - stolen_before) / usage.wall
        if requests:
            run.redis = redis_delta(before, after, requests)
            run.sandbox_cpu = sandbox
        if log:
            run.log_lines = log.read_bytes().count(b"\n")
        return run

    async def naive(self, requests: int) -> Run:
        await self.services.fresh(latency_ms=LATENCY_MS)
        bodies = self.bodies if requests else self.empty
        command = [sys.executable, "-m", "bench.contenders.naive", str(bodies), self.url]
        return await self.measure("a", [[*command, str(CONCURRENCY)]], requests)

    async def plain_arq(self, requests: int) -> Run:
        await self.services.fresh(latency_ms=LATENCY_MS)
        if requests:
            queued = await plain_arq.enqueue(self.services.redis_url, self.pairs)
            assert queued == requests, (queued, requests)
        command = [sys.executable, "-m", "bench.contenders.plain_arq"]
        command += [self.services.redis_url, self.url, str(CONCURRENCY)]
        return await self.measure("b", [command], requests)

    async def paylinks(self, requests: int, name: str = "c", processes: int = 1) -> Run:
        await self.services.fresh(latency_ms=LATENCY_MS)
        memory_before = (await redis_snapshot(self.services))["memory"]
        batch = None
        if requests:
            with quiet_logs():
                async with producer(self.services) as p:
                    report = await p.enqueue(_bodies(self.pairs), batch=f"tput-{name}")
            assert report.enqueued == requests, report.as_json()
            batch = report.batch
        command = [*PAYLINKS, "--concurrency", str(CONCURRENCY)]
        run = await self.measure(
            name, [command] * processes, requests, log=self.folder / f"{name}.log"
        )
        if batch:
            redis = connect(self.services.redis_url)
            try:
                status = await redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
            finally:
                await redis.aclose()
            if int(status.get("created", 0)) != requests or "completed_at" not in status:
                raise RuntimeError(f"{name}: the batch did not complete: {status}")
            memory_after = (await redis_snapshot(self.services))["memory"]
            # On a Redis that never ran some of the commands, this also counts their latency
            # histograms (`latency-tracking`, about 27 KB a command, kept across FLUSHALL): the
            # first round's figure is the higher, the median is the steady cost.
            run.memory_per_result = (memory_after - memory_before) / requests
            run.retained = await retained(self.services, batch, requests)
        return run


async def retained(services: Services, batch: str, requests: int) -> dict[str, float]:
    """MEMORY USAGE of a created result (200 sampled), the batch's member list per request,
    and the arq keys the run left (arq's job, in-progress, retry and result keys)."""
    redis = connect(services.redis_url)
    try:
        keys: list[str] = await redis.lrange(layout.batch_members_key(batch), 0, 199)  # type: ignore[misc]
        records = [await redis.memory_usage(layout.result_key(k), samples=0) for k in keys]
        members = await redis.memory_usage(layout.batch_members_key(batch), samples=0)
        arq_keys = [k async for k in redis.scan_iter(match="arq:*", count=1000)]
    finally:
        await redis.aclose()
    return {
        "record": sum(records) / len(records),
        "batch_list": (members or 0) / requests,
        "arq_keys_left": len(arq_keys),
    }


def _bodies(pairs: list[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    for _, body in pairs:
        yield orjson.loads(body)


def producer(services: Services) -> Producer:
    """paylinks' producer on the private Redis (the configuration's defaults otherwise)."""
    return Producer(connect(services.redis_url), ProducerConfig(REDIS_URL=services.redis_url))


async def measure_all(
    services: Services, count: int, rounds: int, quiet_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-") as tmp:
        bench = Bench(services, count, Path(tmp), quiet_s)
        idle = {
            "a": await bench.naive(0),
            "b": await bench.plain_arq(0),
            "c": await bench.paylinks(0),
        }
        idle["c2"] = Run("c2", 0, Usage(0, idle["c"].usage.cpu * 2, idle["c"].usage.rss_mb), 0, {})
        runs: dict[str, list[Run]] = {name: [] for name in LABELS}
        order = list(runs)
        for turn in range(rounds):
            # A different order each round, so that no contender always runs first or last.
            for name in order[turn % len(order) :] + order[: turn % len(order)]:
                if name == "a":
                    run = await bench.naive(count)
                elif name == "b":
                    run = await bench.plain_arq(count)
                elif name == "c":
                    run = await bench.paylinks(count)
                else:
                    run = await bench.paylinks(count, "c2", processes=2)
                runs[name].append(run)
    return summarize(runs, idle, count, rounds)


def summarize(
    runs: dict[str, list[Run]], idle: dict[str, Run], count: int, rounds: int
) -> dict[str, Any]:
    median = statistics.median
    contenders: dict[str, Any] = {}
    for name, done in runs.items():
        cpu = median([run.usage.cpu for run in done])
        figures: dict[str, Any] = {
            "requests_per_s": round(median([run.rate for run in done])),
            "requests_per_s_best": round(max(run.rate for run in done)),
            "requests_per_s_each_round": [round(run.rate) for run in done],
            "other_tenants_cores_each_round": [round(run.others_cores, 2) for run in done],
            "stolen_cores_each_round": [round(run.stolen_cores, 2) for run in done],
            "wall_s": round(median([run.usage.wall for run in done]), 2),
            "cpu_s": round(cpu, 2),
            "cpu_s_at_start": round(idle[name].usage.cpu, 2),
            "cpu_kernel_share": round(median([r.usage.cpu_kernel / r.usage.cpu for r in done]), 2),
            "cpu_s_per_1000": round((cpu - idle[name].usage.cpu) / count * 1000, 3),
            "peak_rss_mb": round(max(run.usage.rss_mb for run in done), 1),
            "peak_rss_mb_empty_queue": round(idle[name].usage.rss_mb, 1),
            "sandbox_cpu_s_per_1000": round(
                median([run.sandbox_cpu for run in done]) / count * 1000, 3
            ),
        }
        if done[-1].redis:
            figures["redis"] = done[-1].redis
        if done[-1].log_lines:
            figures["log_lines_per_request"] = round(done[-1].log_lines / count, 2)
        memory = [run.memory_per_result for run in done if run.memory_per_result is not None]
        if memory:
            figures["redis_bytes_per_result"] = round(median(memory))
            figures["redis_bytes_per_result_rounds"] = [round(m) for m in memory]
            figures["redis_retained_by_key"] = {
                name: round(value) for name, value in done[-1].retained.items()
            }
        contenders[name] = figures

    def ratio(top: str, bottom: str) -> dict[str, Any]:
        pairs = zip(runs[top], runs[bottom], strict=True)
        each = [round(x.rate / y.rate, 2) for x, y in pairs if y.rate]
        best = max(r.rate for r in runs[top]) / max(r.rate for r in runs[bottom])
        return {"median": round(median(each), 2), "each_round": each, "of_bests": round(best, 2)}

    ratios = {key: ratio(*key.split("/")) for key in RATIOS}
    return {
        "requests": count,
        "rounds": rounds,
        "latency_ms": LATENCY_MS,
        "concurrency": CONCURRENCY,
        "contenders": contenders,
        "ratios": ratios,
    }


RATIOS = ["c/b", "c/a", "c2/c"]
LABELS = {
    "a": "(a) naive asyncio + aiohttp",
    "b": "(b) plain arq",
    "c": "(c) paylinks, every guarantee",
    "c2": "(c2) paylinks, 2 processes",
}


def rows(figures: dict[str, Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    contenders, ratios = figures["contenders"], figures["ratios"]
    for name in contenders:
        label, c = LABELS[name], contenders[name]
        note = (
            f"best {c['requests_per_s_best']}; CPU {c['cpu_s_per_1000']} s/1000; "
            f"peak RSS {c['peak_rss_mb']} MB"
        )
        out.append([label, f"{c['requests_per_s']} req/s", note])
    for key, r in ratios.items():
        note = f"rounds {r['each_round']}, of bests {r['of_bests']}"
        if key in TARGETS:
            verdict = "met" if r["median"] >= TARGETS[key] else "MISSED"
            note = f"target >= {TARGETS[key]}: {verdict}; {note}"
        out.append([f"ratio {key}", r["median"], note])
    others = contenders["c"]["other_tenants_cores_each_round"]
    stolen = contenders["c"]["stolen_cores_each_round"]
    out.append(["other tenants' load", f"{max(others)} cores", f"during (c), each round: {others}"])
    out.append(["cores stolen by the host", f"{max(stolen)} cores",
                f"during (c), each round: {stolen}; (b): "
                f"{contenders['b']['stolen_cores_each_round']}"])  # fmt: skip
    c, b = contenders["c"], contenders["b"]
    top = ", ".join(f"{name} {n}" for name, n in c["redis"]["top_commands_per_request"].items())
    trips = c["redis"]["round_trips_per_request"]
    met = "met" if trips <= ROUND_TRIPS_TARGET else "MISSED"
    out.append(["paylinks Redis round trips/request", trips,
                f"target <= {ROUND_TRIPS_TARGET}: {met}; "
                f"plain arq: {b['redis']['round_trips_per_request']}; Redis' read events, "
                "one for all the calls a write carries"])  # fmt: skip
    out.append(["paylinks Redis commands/request", c["redis"]["commands_per_request"], top])
    out.append(["paylinks Redis CPU s/1000", c["redis"]["cpu_s_per_1000"],
                f"plain arq: {b['redis']['cpu_s_per_1000']}"])  # fmt: skip
    stored, parts = c["redis_bytes_per_result"], c["redis_retained_by_key"]
    out.append(["paylinks Redis bytes/retained created result", stored,
                f"target <= {BYTES_TARGET}: {'met' if stored <= BYTES_TARGET else 'MISSED'}; "
                f"rounds {c['redis_bytes_per_result_rounds']}; "
                "used_memory after the run less before the enqueue, arq's keys included; "
                f"MEMORY USAGE: result {parts['record']} B, batch list {parts['batch_list']} B, "
                f"arq keys left {parts['arq_keys_left']}"])  # fmt: skip
    out.append(["sandbox CPU s/1000 calls", c["sandbox_cpu_s_per_1000"],
                "the API stand-in shares the 2 cores"])  # fmt: skip
    return out


async def run(services: Services, quick: bool) -> dict[str, Any]:
    figures = await measure_all(
        services, 1_000 if quick else 10_000, 1 if quick else 3, QUIET_WAIT_S[quick]
    )
    return {"rows": rows(figures), "figures": figures}


# ----------------------------------------------------------------------------- profiling


async def profile(services: Services, count: int, output: Path) -> None:
    """The paylinks worker draining `count` requests under py-spy (raw, collapsed stacks)."""
    with tempfile.TemporaryDirectory(prefix="paylinks-bench-") as tmp:
        bench = Bench(services, count, Path(tmp))
        await services.fresh(latency_ms=LATENCY_MS)
        with quiet_logs():
            async with producer(services) as p:
                await p.enqueue(_bodies(bench.pairs), batch="profile")
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            raise SystemExit(f"no {py_spy}: pip install py-spy into this environment first")
        command = [str(py_spy), "record", "--format", "raw", "--nolineno", "-o", str(output)]
        command += ["--", *PAYLINKS, "--concurrency", str(CONCURRENCY)]
        with open(Path(tmp) / "worker.log", "wb") as log:
            await asyncio.to_thread(
                subprocess.run, command, env=bench.env(), cwd=ROOT, stderr=log, check=True
            )


def top_costs(collapsed: Path, limit: int = 30) -> list[tuple[str, float, float]]:
    """(function, % of samples inside it, % with it on top of the stack) from py-spy raw."""
    inside: Counter[str] = Counter()
    on_top: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [_short(frame) for frame in stack.split(";")]
        for name in set(frames):
            inside[name] += n
        on_top[frames[-1]] += n
    return [
        (name, round(100 * n / total, 1), round(100 * on_top[name] / total, 1))
        for name, n in inside.most_common(limit)
    ]


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def main() -> None:
    from bench.services import running

    if len(sys.argv) < 2 or sys.argv[1] != "profile":
        raise SystemExit("usage: python -m bench.throughput profile [COUNT]")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    output = Path(tempfile.gettempdir()) / "paylinks-worker-profile.txt"
    with running() as services:
        asyncio.run(profile(services, count, output))
    print(f"py-spy samples in {output}; % of samples inside a function, and at the top:")
    for name, inside, top in top_costs(output):
        print(f"{inside:5.1f}% {top:5.1f}%  {name}")


if __name__ == "__main__":
    main()
