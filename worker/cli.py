"""The `paylinks` command: enqueue, worker, status, results, sandbox and demo."""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

import orjson
import uvloop
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from paylinks import __version__
from paylinks.jobs.config import ProducerConfig
from paylinks.jobs.deadletters import DeadLetters, dead_letters
from paylinks.jobs.intake import Numbered, read_csv, read_json_lines
from paylinks.jobs.logs import configure
from paylinks.jobs.producer import EnqueueReport, Producer, Rejection, new_batch_id
from paylinks.jobs.records import RESULT_COLUMNS
from paylinks.worker import sandbox_options
from paylinks.worker.config import ConomyConfig, WorkerConfig, describe
from paylinks.worker.progress import watch

Config = TypeVar("Config", bound=BaseSettings)

EXIT_REJECTED = 1
EXIT_CONFIG = 2


def load(config: type[Config]) -> Config:
    """The configuration from the environment, or one clear line and exit code 2."""
    try:
        return config()
    except ValidationError as e:
        print(f"paylinks: configuration error: {describe(e)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(orjson.dumps(value).decode() + "\n")


def producer() -> Producer:
    return Producer.connect(load(ProducerConfig))


def requests_in(source: IO[bytes], template: Any) -> Iterator[Numbered]:
    return read_csv(source, template) if template is not None else read_json_lines(source)


async def enqueue(args: argparse.Namespace) -> int:
    template = orjson.loads(Path(args.template).read_bytes()) if args.template else None
    configure()
    # Everything loaded so far lives as long as the process: keep the collector off it, so
    # that it does not walk those objects over and over while a large file streams by.
    gc.freeze()
    async with producer() as p:
        with ExitStack() as stack:
            source: IO[bytes] = (
                sys.stdin.buffer if args.file == "-" else stack.enter_context(open(args.file, "rb"))
            )
            rejected: list[Rejection] = []
            if args.strict:
                # Two passes, so standard input is kept on disk for the second one.
                if not source.seekable():
                    copy = stack.enter_context(tempfile.TemporaryFile())
                    shutil.copyfileobj(source, copy)
                    source = copy
                rejected = [
                    Rejection(n, r) for n, r in requests_in(source, template) if isinstance(r, str)
                ]
                source.seek(0)
            report = (
                EnqueueReport(args.batch or new_batch_id(), rejected=rejected)
                if rejected
                else await p.enqueue_numbered(
                    requests_in(source, template), args.batch, args.webhook
                )
            )
        print_report(report, args.json)
        if args.wait and report.enqueued + report.duplicates:
            failed = (await watch(p, report.batch))["failed"]
            if report.duplicate_keys:
                print(f"waiting for {report.duplicates} duplicates", file=sys.stderr)
                earlier = await p.wait_for(report.duplicate_keys)
                failed += earlier["failed"] + earlier["expired"]
            return 1 if failed else 0
    return EXIT_REJECTED if report.rejected else 0


def print_report(report: EnqueueReport, as_json: bool) -> None:
    if as_json:
        print_json(report.as_json())
    else:
        print(report.batch)
        for rejection in report.rejected:
            print(f"line {rejection.line}: {rejection.error}", file=sys.stderr)
        print(
            f"enqueued {report.enqueued}, duplicates {report.duplicates}, "
            f"rejected {len(report.rejected)}",
            file=sys.stderr,
        )


async def status(args: argparse.Namespace) -> int:
    async with producer() as p:
        counts = await p.status(args.batch)
        if counts is None:
            print(f"paylinks: no batch {args.batch!r} (unknown or expired)", file=sys.stderr)
            return 1
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
                print(
                    f"{row['failedAt']}  {row['checkoutToken']}  batch {row['batch']}  "
                    f"attempts {row['attempts']}  HTTP {row['httpStatus'] or '-'}  {row['error']}"
                )
    return 0


async def retry_dead_letters(args: argparse.Namespace) -> int:
    async with producer() as p:
        counts = await DeadLetters(p.redis, p.config).retry(batch=args.batch, token=args.token)
    print_json(counts)
    return 0


async def purge_dead_letters(args: argparse.Namespace) -> int:
    async with producer() as p:
        purged = await DeadLetters(p.redis, p.config).purge(batch=args.batch)
    print_json({"purged": purged})
    return 0


def worker(args: argparse.Namespace) -> int:
    from paylinks.worker.app import run

    config = load(WorkerConfig)
    if args.concurrency:
        config = config.model_copy(update={"concurrency": args.concurrency})
    run(config, load(ConomyConfig), burst=args.burst)
    return 0


def serve_sandbox(args: argparse.Namespace) -> int:
    # aiohttp's server: a tenth of a second no other command needs.
    from paylinks.worker import sandbox

    configure()
    with suppress(KeyboardInterrupt):
        asyncio.run(sandbox.serve(args.host, args.port, sandbox_options.options_from(args)))
    return 0


def dashboard(args: argparse.Namespace) -> int:
    # aiohttp's server and jinja2: only this command needs them.
    from paylinks.dashboard.app import DashboardConfig, serve

    return serve(load(DashboardConfig), args.host, args.port, read_only=args.read_only)


def demo(args: argparse.Namespace) -> int:
    from paylinks.worker.demo import run_demo

    return run_demo(args.file, workers=args.workers)


def in_loop(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Any:
    return lambda args: asyncio.run(command(args))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="paylinks", description="Create Conomy payment links in bulk."
    )
    root.add_argument("--version", action="version", version=f"paylinks {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("enqueue", help="validate checkout requests and enqueue a batch")
    p.add_argument("file", help="JSON Lines (or CSV with --template) file, or - for stdin")
    p.add_argument("--batch", help="batch id (default: a new one)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--strict", action="store_true", help="enqueue nothing if any line is bad")
    p.add_argument("--template", help="read CSV, mapped into requests by this JSON template")
    p.add_argument("--wait", action="store_true", help="show progress until the batch is done")
    p.add_argument("--webhook", help="POST the batch's completion here, signed (HMAC-SHA256)")
    p.set_defaults(run=in_loop(enqueue))

    p = commands.add_parser("worker", help="run one worker process")
    p.add_argument("--concurrency", type=int, help="jobs at once (PAYLINKS_CONCURRENCY)")
    p.add_argument("--burst", action="store_true", help="exit once nothing is left to do")
    p.set_defaults(run=worker)

    p = commands.add_parser("status", help="a batch's counts by state")
    p.add_argument("batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=in_loop(status))

    p = commands.add_parser("batches", help="recent batches with their counts")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=in_loop(batches))

    p = commands.add_parser("results", help="one row per checkout request of a batch")
    p.add_argument("batch")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(run=in_loop(results))

    dead = commands.add_parser("dead-letters", help="requests that failed for good")
    actions = dead.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="list dead letters, oldest first")
    p.add_argument("--batch")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=in_loop(list_dead_letters))
    p = actions.add_parser("retry", help="queue dead letters again under the same key")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--batch")
    which.add_argument("--token", help="one checkoutToken")
    p.set_defaults(run=in_loop(retry_dead_letters))
    p = actions.add_parser("purge", help="forget dead letters (their records stay failed)")
    p.add_argument("--batch")
    p.set_defaults(run=in_loop(purge_dead_letters))

    p = commands.add_parser("sandbox", help="serve the local sandbox of the Conomy API")
    sandbox_options.add_arguments(p)
    p.set_defaults(run=serve_sandbox)

    p = commands.add_parser("dashboard", help="serve the web dashboard over the fleet's Redis")
    p.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8700, help="port (default: %(default)s)")
    p.add_argument("--read-only", action="store_true", help="show, but offer and accept no action")
    p.set_defaults(run=dashboard)

    p = commands.add_parser("demo", help="run a whole batch end to end on private services")
    p.add_argument("--file", default="examples/checkouts.jsonl")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(run=demo)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # uvloop's event loop costs a tenth less CPU per checkout session (make bench).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
