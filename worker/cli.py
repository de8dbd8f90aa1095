"""The `paylinks` command: enqueue, worker, health, status, results, sandbox and demo."""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack, asynccontextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
import uvloop
from pydantic_settings import BaseSettings

from paylinks import __version__
from paylinks.jobs.config import IntakeConfig, LogConfig, ProducerConfig
from paylinks.jobs.connection import RedisUnreachableError, check_reachable
from paylinks.jobs.deadletters import DeadLetters, dead_letters
from paylinks.jobs.intake import InputError, Numbered, read_csv, read_json_lines
from paylinks.jobs.logs import configure
from paylinks.jobs.producer import EnqueueReport, Producer, Rejection, new_batch_id
from paylinks.jobs.records import RESULT_COLUMNS
from paylinks.jobs.replication import NotReplicatedError
from paylinks.worker.config import ConomyConfig, MetricsConfig, WorkerConfig, load, settings_help
from paylinks.worker.health import HealthConfig
from paylinks.worker.progress import watch

EXIT_FAILED = 1
EXIT_REJECTED = 1
EXIT_NOT_FOUND = 1
# Also argparse's code for a bad command line.
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130
# What `paylinks demo` enqueues unless given a file. In the repository it is a link to
# examples/checkouts.jsonl; the wheel holds the file itself.
DEMO_INPUT = resources.files("paylinks") / "examples" / "checkouts.jsonl"


class CannotStartError(Exception):
    """A command that cannot do its work (unreadable input, say): one line, exit code 2."""


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(orjson.dumps(value).decode() + "\n")


@asynccontextmanager
async def producer() -> AsyncIterator[Producer]:
    config = load(ProducerConfig)
    # Fails in seconds: the client's retries are for a Redis that restarts, not one that
    # was never there.
    check_reachable(config)
    async with Producer.connect(config) as p:
        yield p


def no_batch(batch: str) -> int:
    print(f"paylinks: no batch {batch!r} (unknown or expired)", file=sys.stderr)
    return EXIT_NOT_FOUND


def open_input(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as e:
        raise CannotStartError(f"cannot read {path}: {e.strerror}") from None


def read_template(path: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise CannotStartError(f"cannot read the template {path}: {e.strerror}") from None
    except orjson.JSONDecodeError as e:
        raise CannotStartError(f"the template {path} is not valid JSON: {e}") from None


def requests_in(source: IO[bytes], template: Any, default_duration: int) -> Iterator[Numbered]:
    if template is not None:
        return read_csv(source, template, default_duration)
    return read_json_lines(source, default_duration)


async def enqueue(args: argparse.Namespace) -> int:
    template = read_template(args.template) if args.template else None
    if template is None and args.file.lower().endswith(".csv"):
        raise CannotStartError(
            f"{args.file} is CSV: give --template T, a JSON template that maps its columns "
            "into a request (README: Intake from CSV)"
        )
    # Everything loaded so far lives as long as the process: keep the collector off it, so
    # that it does not walk those objects over and over while a large file streams by.
    gc.freeze()
    with ExitStack() as stack:
        source = (
            sys.stdin.buffer if args.file == "-" else stack.enter_context(open_input(args.file))
        )
        if args.strict and not source.seekable():
            # Two passes, so standard input is kept on disk for the second one.
            copy = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(source, copy)
            source = copy
        async with producer() as p:
            try:
                report = await enqueue_from(p, args, source, template)
            except InputError as e:
                raise CannotStartError(f"{args.file}: {e}") from None
            print_report(report, args.json)
            if args.wait and (report.enqueued or report.duplicates):
                return await wait_for_report(p, report)
    return EXIT_REJECTED if report.rejected else 0


async def enqueue_from(
    p: Producer, args: argparse.Namespace, source: IO[bytes], template: Any
) -> EnqueueReport:
    if args.strict:
        source.seek(0)
        rejected = [
            Rejection(n, r)
            for n, r in requests_in(source, template, p.config.default_duration)
            if isinstance(r, str)
        ]
        if rejected:
            return EnqueueReport(args.batch or new_batch_id(), rejected=rejected)
        source.seek(0)
    return await p.enqueue_numbered(
        requests_in(source, template, p.config.default_duration), args.batch, args.webhook
    )


async def wait_for_report(p: Producer, report: EnqueueReport) -> int:
    """Until the batch and the requests enqueued before ended: 0 if every one was created."""
    failed = 0
    if report.opened:
        failed += (await watch(p, report.batch))["failed"]
    if report.duplicate_keys:
        print(f"waiting for {report.duplicates} duplicates (in {where(report)})", file=sys.stderr)
        earlier = await p.wait_for(report.duplicate_keys)
        failed += earlier["failed"] + earlier["expired"]
    return EXIT_FAILED if failed else 0


def where(report: EnqueueReport) -> str:
    named = ", ".join(report.duplicate_batches)
    return f"batch {named}" if len(report.duplicate_batches) == 1 else f"batches {named}"


def print_report(report: EnqueueReport, as_json: bool) -> None:
    if as_json:
        print_json(report.as_json())
        return
    # The batch to look at: this run's, or, when it added nothing, the one holding it all.
    if report.opened:
        print(report.batch)
    elif len(report.duplicate_batches) == 1:
        print(*report.duplicate_batches)
    for rejection in report.rejected:
        print(f"line {rejection.line}: {rejection.error}", file=sys.stderr)
    summary = (
        f"enqueued {report.enqueued}, duplicates {report.duplicates}, "
        f"rejected {len(report.rejected)}"
    )
    if report.duplicates:
        summary += f"; the duplicates are in {where(report)}"
    if not report.opened:
        summary += "; nothing new, so no batch was opened"
    print(summary, file=sys.stderr)


async def status(args: argparse.Namespace) -> int:
    async with producer() as p:
        counts = await p.status(args.batch)
        if counts is None:
            return no_batch(args.batch)
        if args.json or not sys.stdout.isatty():
            print_json(counts)
        else:
            await watch(p, args.batch)
    return 0


async def batches(args: argparse.Namespace) -> int:
    async with producer() as p:
        recent = await p.batches.recent(args.limit)
    if args.json or not sys.stdout.isatty():
        for counts in recent:
            print_json(counts)
        return 0
    for c in recent:
        print(
            f"{c['batch']:<28} total {c['total']:>7}  created {c['created']:>7}  "
            f"failed {c['failed']:>6}  pending {c['total'] - c['created'] - c['failed']:>7}  "
            f"{'done' if c['done'] else 'running'}"
        )
    return 0


async def results(args: argparse.Namespace) -> int:
    async with producer() as p:
        if await p.status(args.batch) is None:
            return no_batch(args.batch)
        with ExitStack() as stack:
            out = (
                stack.enter_context(open(args.output, "w", newline=""))
                if args.output
                else sys.stdout
            )
            writer = csv.DictWriter(out, RESULT_COLUMNS) if args.format == "csv" else None
            if writer:
                writer.writeheader()
            async for row in p.results(args.batch):
                if writer:
                    writer.writerow(row)
                else:
                    print_json(row, out)
    return 0


async def list_dead_letters(args: argparse.Namespace) -> int:
    async with producer() as p:
        async for letter in dead_letters(p.redis, batch=args.batch):
            row = letter.as_json()
            if args.json:
                print_json(row)
            else:
                print(dead_letter_line(row))
    return 0


def dead_letter_line(row: dict[str, Any]) -> str:
    line = (
        f"{row['failedAt']}  {row['checkoutToken']}  batch {row['batch']}  "
        f"attempts {row['attempts']}  HTTP {row['httpStatus'] or '-'}"
    )
    # What the provider's support asks for: the error's type and code, and its traceId.
    if row["errorType"] or row["errorCode"]:
        line += f"  {row['errorType'] or '-'} (code {row['errorCode'] or '-'})"
    line += f"  {row['error']}"
    if row["traceId"]:
        line += f"  traceId {row['traceId']}"
    return line


async def retry_dead_letters(args: argparse.Namespace) -> int:
    async with producer() as p:
        if args.batch and await p.status(args.batch) is None:
            return no_batch(args.batch)
        counts = await DeadLetters(p.redis, p.config).retry(batch=args.batch, token=args.token)
    print_json(counts)
    if args.token and not counts["retried"] + counts["busy"]:
        print(f"paylinks: {args.token!r} is not a dead letter", file=sys.stderr)
        return EXIT_NOT_FOUND
    return 0


async def purge_dead_letters(args: argparse.Namespace) -> int:
    async with producer() as p:
        if args.batch and await p.status(args.batch) is None:
            return no_batch(args.batch)
        purged = await DeadLetters(p.redis, p.config).purge(batch=args.batch)
    print_json({"purged": purged})
    return 0


def schema(args: argparse.Namespace) -> int:
    from paylinks.jobs.models import request_schema

    config = load(IntakeConfig)
    sys.stdout.write(
        orjson.dumps(request_schema(config.default_duration), option=orjson.OPT_INDENT_2).decode()
        + "\n"
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from paylinks.worker.app import run
    from paylinks.worker.monitor import MetricsPortError

    config = load(WorkerConfig)
    if args.concurrency:
        config = config.model_copy(update={"concurrency": args.concurrency})
    try:
        run(config, load(ConomyConfig), burst=args.burst)
    except MetricsPortError as e:
        raise CannotStartError(str(e)) from None
    return 0


def health(args: argparse.Namespace) -> int:
    from paylinks.worker.healthcheck import unhealthy

    # Exit code 1 for every failure: Docker reserves 2.
    reason = unhealthy("/healthz" if args.live else "/readyz")
    if reason is not None:
        print(f"paylinks: health: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print("alive" if args.live else "ready")
    return 0


def check(args: argparse.Namespace) -> int:
    from paylinks.worker.check import CheckFailedError
    from paylinks.worker.check import check as run_check

    config, conomy = load(WorkerConfig), load(ConomyConfig)
    try:
        asyncio.run(run_check(config, conomy))
    except CheckFailedError as e:
        sys.stdout.flush()
        print(f"paylinks: check: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def serve_sandbox(args: argparse.Namespace) -> int:
    # aiohttp's server: a tenth of a second no other command needs.
    from paylinks.devtools import sandbox, sandbox_options

    with suppress(KeyboardInterrupt):
        asyncio.run(sandbox.serve(args.host, args.port, sandbox_options.options_from(args)))
    return 0


def dashboard(args: argparse.Namespace) -> int:
    # aiohttp's server and jinja2: only this command needs them.
    from paylinks.dashboard.app import DashboardConfig, serve

    return serve(load(DashboardConfig), args.host, args.port, read_only=args.read_only)


def demo(args: argparse.Namespace) -> int:
    from paylinks.devtools.demo import run_demo

    try:
        with resources.as_file(DEMO_INPUT) as packaged:
            return run_demo(args.file or str(packaged), workers=args.workers)
    except KeyboardInterrupt:
        # The workers, the sandbox and Redis are stopped by now, in that order.
        print("paylinks demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def in_loop(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Any:
    return lambda args: asyncio.run(command(args))


def add_command(
    commands: Any, name: str, help: str, *settings: type[BaseSettings], note: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the environment variables it reads."""
    epilog = settings_help(*settings) + (f"\n\n{note}" if note else "")
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="paylinks", description="Create Conomy payment links in bulk."
    )
    root.add_argument("--version", action="version", version=f"paylinks {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    p = add_command(
        commands, "enqueue", "validate checkout requests and enqueue a batch", ProducerConfig
    )
    p.add_argument("file", help="JSON Lines (or CSV with --template) file, or - for stdin")
    p.add_argument("--batch", help="batch id (default: a new one)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--strict", action="store_true", help="enqueue nothing if any line is bad")
    p.add_argument("--template", help="read CSV, mapped into requests by this JSON template")
    p.add_argument("--wait", action="store_true", help="show progress until the batch is done")
    p.add_argument("--webhook", help="POST the batch's completion here, signed (HMAC-SHA256)")
    p.set_defaults(run=in_loop(enqueue))

    p = add_command(
        commands,
        "schema",
        "print the JSON Schema of a checkout request (the reference's field names)",
        IntakeConfig,
    )
    p.set_defaults(run=schema)

    p = add_command(
        commands,
        "worker",
        "run one worker process",
        WorkerConfig,
        ConomyConfig,
        HealthConfig,
        MetricsConfig,
        note="With PAYLINKS_METRICS_PORT set it serves /metrics, /healthz and /readyz there; "
        "each worker process on a host needs a port of its own.",
    )
    p.add_argument("--concurrency", type=int, help="jobs at once (PAYLINKS_CONCURRENCY)")
    p.add_argument("--burst", action="store_true", help="exit once nothing is left to do")
    p.set_defaults(run=worker)

    p = add_command(
        commands,
        "health",
        "for Docker's HEALTHCHECK: exit 0 if this host's worker is ready, else 1 and why",
        MetricsConfig,
        note="Asks the worker's /readyz on PAYLINKS_METRICS_PORT (loopback unless "
        "PAYLINKS_METRICS_HOST names an address): not ready while Redis does not answer it, "
        "or while it drains after SIGTERM.",
    )
    p.add_argument("--live", action="store_true", help="ask /healthz (the loop answers) instead")
    p.set_defaults(run=health)

    p = add_command(
        commands,
        "check",
        "before a run: settings, Redis, a token and one page of sessions; creates nothing",
        WorkerConfig,
        ConomyConfig,
    )
    p.set_defaults(run=check)

    p = add_command(commands, "status", "a batch's counts by state", ProducerConfig)
    p.add_argument("batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=in_loop(status))

    p = add_command(commands, "batches", "recent batches with their counts", ProducerConfig)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=in_loop(batches))

    p = add_command(commands, "results", "one row per checkout request of a batch", ProducerConfig)
    p.add_argument("batch")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(run=in_loop(results))

    dead = add_command(commands, "dead-letters", "requests that failed for good", ProducerConfig)
    actions = dead.add_subparsers(dest="action", required=True)
    p = add_command(actions, "list", "list dead letters, oldest first", ProducerConfig)
    p.add_argument("--batch")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=in_loop(list_dead_letters))
    p = add_command(actions, "retry", "queue dead letters again under the same key", ProducerConfig)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--batch")
    which.add_argument("--token", help="one checkoutToken")
    p.set_defaults(run=in_loop(retry_dead_letters))
    p = add_command(
        actions, "purge", "forget dead letters (their records stay failed)", ProducerConfig
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", help="the dead letters of this batch")
    which.add_argument("--all", action="store_true", help="every dead letter, of every batch")
    p.set_defaults(run=in_loop(purge_dead_letters))

    # The development tools stay out of the runtime: only their flags are read here.
    from paylinks.devtools import sandbox_options

    p = add_command(commands, "sandbox", "serve the local sandbox of the Conomy API", LogConfig)
    sandbox_options.add_arguments(p)
    p.set_defaults(run=serve_sandbox)

    p = add_command(
        commands,
        "dashboard",
        "serve the web dashboard over the fleet's Redis",
        ProducerConfig,
        HealthConfig,
        note="Also PAYLINKS_DASHBOARD_TOKEN (required off loopback; README: Dashboard).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8700, help="port (default: %(default)s)")
    p.add_argument("--read-only", action="store_true", help="show, but offer and accept no action")
    p.set_defaults(run=dashboard)

    p = add_command(
        commands,
        "demo",
        "run a whole batch end to end on private services",
        WorkerConfig,
        note="With REDIS_URL unset the demo starts a private redis-server; it sets the "
        "CONOMY_ variables to its own sandbox's.",
    )
    p.add_argument("--file", help="JSON Lines to enqueue (default: the demo's 240 invoices)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(run=demo)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # uvloop's event loop costs a tenth less CPU per checkout session (make bench).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # The application configures logging, for every command: the library never does.
    configure(load(LogConfig).log_level)
    try:
        code = args.run(args)
        # Written out here, where a reader that went away is caught, not at exit.
        sys.stdout.flush()
    except (CannotStartError, RedisUnreachableError, NotReplicatedError) as e:
        print(f"paylinks: {e}", file=sys.stderr)
        code = EXIT_CANNOT_START
    except BrokenPipeError:
        # The reader went away (`| head`): not worth a traceback. Python's recipe: point
        # stdout at devnull so that the flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
