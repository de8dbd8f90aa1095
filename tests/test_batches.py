"""Batches end to end: CSV intake through a template, the completion signal (log event, stream
and signed webhook) exactly once, `paylinks batches`/`status`, and `enqueue --wait`."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port
from paylinks.jobs.layout import COMPLETED_BATCHES, QUEUE, checkout_key, idempotency_key
from paylinks.jobs.models import DEFAULT_DURATION
from tests.helpers import (
    EXAMPLES,
    Sandbox,
    events,
    example_requests,
    paylinks,
    results,
    run_workers,
    start_worker,
    stop_worker,
    write_requests,
)

INVOICES = EXAMPLES / "invoices.csv"
TEMPLATE = EXAMPLES / "invoices-template.json"
HEADER = "invoice,net,vat,total,currency,first_name,email,phone,valid_seconds"
WEBHOOK_SECRET = "test-secret"
# The fields the README documents for `status`; a status may carry more.
STATUS_FIELDS = ("batch", "total", "queued", "in_progress", "retrying", "created", "failed", "done")


def csv_rows() -> list[dict[str, str]]:
    with INVOICES.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def enqueue_csv(
    source: str, *args: str, env: dict[str, str], input: bytes | None = None
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    done = paylinks(
        "enqueue",
        source,
        "--template",
        str(TEMPLATE),
        "--json",
        *args,
        env=env,
        input=input,
        timeout=30,
    )
    assert "Traceback" not in done.stderr.decode(), done.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return done, report


def enqueue_jsonl(path: Path, *args: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    done = paylinks("enqueue", str(path), "--json", *args, env=env, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report, done.stderr.decode()


def status_of(batch: str, env: dict[str, str]) -> dict[str, Any]:
    done = paylinks("status", batch, env=env, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    status: dict[str, Any] = json.loads(done.stdout)
    return status


async def stored_request(redis: Redis, token: str) -> dict[str, Any]:
    body = await redis.hget(checkout_key(idempotency_key(token)), "request")  # type: ignore[misc]
    assert body is not None, f"no record for {token}"
    request: dict[str, Any] = json.loads(body)
    return request


async def completions(redis: Redis) -> list[dict[str, str]]:
    """The completion stream's entries, oldest first, as dicts of their fields."""
    entries = await redis.xrange(COMPLETED_BATCHES)
    return [dict(fields) for _, fields in entries]


def completed_events(*logs: str) -> list[dict[str, Any]]:
    return [e for log in logs for e in events(log) if e["event"] == "batch.completed"]


def renamed(requests: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{**r, "checkoutToken": f"{prefix}{i:04d}"} for i, r in enumerate(requests, start=1)]


# --- CSV intake -------------------------------------------------------------------------------


async def test_the_invoice_export_is_enqueued_through_its_template(
    redis: Redis, sandbox: Sandbox, env: dict[str, str]
) -> None:
    rows = csv_rows()
    assert len(rows) == 20
    assert {r["currency"] for r in rows} == {"CLP", "USD"}
    assert any(not r["phone"] for r in rows)

    done, report = enqueue_csv(str(INVOICES), "--batch", "invoices", env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert report == {
        "batch": "invoices",
        "enqueued": 20,
        "duplicates": 0,
        "duplicate_batches": {},
        "rejected": [],
    }

    # A whole row, exactly as the README's template renders it.
    assert await stored_request(redis, "F-2026-004101") == {
        "checkoutToken": "F-2026-004101",
        "items": [
            {
                "preTaxAmount": "339000",
                "totalAmount": "403410",
                "description": "Invoice F-2026-004101",
                "tax": {"name": "IVA", "type": "PERCENTAGE", "value": "19", "amount": "64410"},
            }
        ],
        "currency": "CLP",
        "paymentMethodsAllowed": ["CARD"],
        "customer": {
            "firstName": "Camila",
            "email": "camila.cliente01@example.cl",
            "phoneNumber": "962992312",
        },
        "destinations": [
            {
                "type": "ACCOUNT",
                "amount": "403410",
                "account": {
                    "type": "CHECKING",
                    "currency": "CLP",
                    "accountNumber": "000123",
                    "accountHolder": "Acme SpA",
                },
            }
        ],
        "duration": 86400,
        "owner": {"identityId": "idn_acme"},
    }
    # Every row: blank optional cells leave their field out, a customer with no cell at all
    # is left out whole, `{valid_seconds:int}` is a JSON number, and a blank one gives the
    # default duration.
    for row in rows:
        request = await stored_request(redis, row["invoice"])
        assert request["items"][0]["preTaxAmount"] == row["net"]
        assert request["items"][0]["tax"]["amount"] == row["vat"]
        assert request["items"][0]["totalAmount"] == row["total"]
        assert request["destinations"][0]["amount"] == row["total"]
        assert request["currency"] == row["currency"]
        expected_customer = {
            name: row[column]
            for name, column in (("firstName", "first_name"), ("email", "email"))
            if row[column]
        } | ({"phoneNumber": row["phone"]} if row["phone"] else {})
        assert request.get("customer") == (expected_customer or None), row["invoice"]
        if row["valid_seconds"]:
            assert request["duration"] == int(row["valid_seconds"])
        else:
            assert request["duration"] == DEFAULT_DURATION, row["invoice"]
    walk_in = await stored_request(redis, "F-2026-004110")
    assert "customer" not in walk_in
    assert walk_in["duration"] == DEFAULT_DURATION

    # And the API takes every one of them.
    run_workers(env, 1)
    rows_out = results("invoices", env)
    assert [r["checkoutToken"] for r in rows_out] == [r["invoice"] for r in rows]
    assert {r["state"] for r in rows_out} == {"created"}
    assert (await sandbox.stats())["sessions"] == 20


async def test_csv_from_standard_input(redis: Redis, env: dict[str, str]) -> None:
    done, report = enqueue_csv("-", "--batch", "from-stdin", env=env, input=INVOICES.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert report == {
        "batch": "from-stdin",
        "enqueued": 20,
        "duplicates": 0,
        "duplicate_batches": {},
        "rejected": [],
    }
    status = status_of("from-stdin", env)
    assert (status["total"], status["queued"], status["done"]) == (20, 20, False)
    request = await stored_request(redis, "F-2026-004104")
    assert request["currency"] == "USD"
    assert request["items"][0]["totalAmount"] == "76.33"


async def test_a_bad_csv_row_is_named_by_its_csv_line_and_field(
    redis: Redis, env: dict[str, str]
) -> None:
    good = csv_rows()[:2]
    lines = [
        HEADER,
        ",".join(good[0].values()),  # line 2
        "F-BAD-1,100000,19000,119001,CLP,Ana,,,86400",  # line 3: total is not net + vat
        "F-BAD-2,100000,19000,119000,CLP,Ana,,,2 days",  # line 4: not a whole number
        ",".join(good[1].values()),  # line 5
    ]
    done, report = enqueue_csv("-", env=env, input=("\n".join(lines) + "\n").encode())
    assert done.returncode == 1
    assert report["enqueued"] == 2
    rejected = {r["line"]: r["error"] for r in report["rejected"]}
    assert sorted(rejected) == [3, 4]
    assert "valid_seconds" in rejected[4]
    assert "whole number" in rejected[4]
    assert "'2 days'" in rejected[4]
    # The same one-line `field: reason` the JSON Lines intake gives for this request.
    assert "items[0]: totalAmount 119001 must equal" in rejected[3], rejected[3]
    assert "\n" not in rejected[3], rejected[3]
    status = status_of(report["batch"], env)
    assert status["total"] == 2


async def test_a_template_naming_a_missing_column_is_one_error_before_any_row(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    template = json.loads(TEMPLATE.read_text())
    template["customer"]["lastName"] = "{last_name}"
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    done = paylinks(
        "enqueue", str(INVOICES), "--template", str(path), "--json", env=env, timeout=30
    )
    assert done.returncode == 2, done.stderr.decode()
    assert done.stdout == b""
    (line,) = done.stderr.decode().splitlines()
    assert str(INVOICES) in line
    assert "'last_name'" in line
    assert await redis.zcard(QUEUE) == 0


async def test_a_row_with_fewer_cells_than_the_header_is_rejected_by_line(
    redis: Redis, env: dict[str, str]
) -> None:
    # A truncated export line: the cells after `currency` are missing altogether.
    good = csv_rows()[0]
    lines = [HEADER, "F-SHORT-1,100000,19000,119000,CLP", ",".join(good.values())]
    done = paylinks(
        "enqueue",
        "-",
        "--template",
        str(TEMPLATE),
        "--json",
        env=env,
        timeout=30,
        input=("\n".join(lines) + "\n").encode(),
    )
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr[-1500:]
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert [r["line"] for r in report["rejected"]] == [2]
    assert report["enqueued"] == 1
    # The batch was sealed, so it can complete.
    status = status_of(report["batch"], env)
    assert status["total"] == 1


# --- The completion signal ----------------------------------------------------------------------


async def test_three_workers_signal_a_batch_completion_exactly_once(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    # Calls take a little while, so the three workers share the batch and finish together.
    await sandbox.faults(latency_ms=50)
    path = write_requests(tmp_path / "sixty.jsonl", example_requests(60))
    report, enqueue_log = enqueue_jsonl(path, "--batch", "sixty", env=env)
    assert report["enqueued"] == 60

    logs = run_workers(env, 3, "--concurrency", "4")

    created_by = [sum(e["event"] == "checkout.created" for e in events(log)) for log in logs]
    assert sum(created_by) == 60
    assert sum(1 for n in created_by if n) >= 2, f"one worker did it all: {created_by}"
    completed = completed_events(enqueue_log, *logs)
    assert len(completed) == 1, completed
    assert {k: completed[0][k] for k in ("batch", "total", "created", "failed")} == {
        "batch": "sixty",
        "total": 60,
        "created": 60,
        "failed": 0,
    }
    entries = [e for e in await completions(redis) if e["batch"] == "sixty"]
    assert len(entries) == 1, entries
    assert {k: entries[0][k] for k in ("total", "created", "failed")} == {
        "total": "60",
        "created": "60",
        "failed": "0",
    }
    completed_at = int(entries[0]["completed_at"])
    assert abs(completed_at / 1000 - time.time()) < 120
    assert await redis.hget("paylinks:batch:sixty", "completed_at") == str(completed_at)  # type: ignore[misc]
    status = status_of("sixty", env)
    assert (status["created"], status["failed"], status["done"]) == (60, 0, True)
    stats = await sandbox.stats()
    assert (stats["sessions"], stats["duplicate_tokens"]) == (60, 0)


async def test_a_run_of_only_duplicates_opens_no_batch_and_names_where_they_are(
    redis: Redis, sandbox: Sandbox, env: dict[str, str]
) -> None:
    first_done, first = enqueue_csv(str(INVOICES), "--batch", "first", env=env)
    assert (first_done.returncode, first["enqueued"]) == (0, 20)
    # The same file again while the first batch is still queued: nothing new to do.
    again_done, again = enqueue_csv(str(INVOICES), "--batch", "again", env=env)
    assert again_done.returncode == 0, again_done.stderr.decode()
    assert (again["enqueued"], again["duplicates"], again["rejected"]) == (0, 20, [])
    assert (again["batch"], again["duplicate_batches"]) == (None, {"first": 20})

    # No empty batch: no record, no entry in `paylinks batches`, no completion signal.
    assert paylinks("status", "again", env=env).returncode == 1
    assert [b["batch"] for b in map(json.loads, batches_listed(env))] == ["first"]
    assert completed_events(again_done.stderr.decode()) == []
    assert await completions(redis) == []

    logs = run_workers(env, 1)
    assert [e["batch"] for e in completed_events(*logs)] == ["first"]
    assert [(e["batch"], e["total"], e["created"]) for e in await completions(redis)] == [
        ("first", "20", "20"),
    ]
    assert (await sandbox.stats())["sessions"] == 20


def batches_listed(env: dict[str, str]) -> list[str]:
    done = paylinks("batches", "--json", env=env)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines()


async def test_a_completed_batch_is_posted_to_its_webhook_signed_and_retried(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    deliveries: list[tuple[dict[str, str], bytes]] = []
    two_delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        deliveries.append((dict(request.headers), await request.read()))
        if len(deliveries) >= 2:
            two_delivered.set()
        return web.Response(status=500 if len(deliveries) == 1 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        path = write_requests(tmp_path / "five.jsonl", example_requests(5))
        url = f"http://127.0.0.1:{port}/hook"
        report, _ = await asyncio.to_thread(
            enqueue_jsonl, path, "--batch", "hooked", "--webhook", url, env=env
        )
        assert report["enqueued"] == 5
        worker_env = {**env, "PAYLINKS_WEBHOOK_SECRET": WEBHOOK_SECRET}
        workers = [start_worker(worker_env, "--burst") for _ in range(2)]
        # Burst workers stay while the retried webhook job waits on the queue (deferred).
        outputs = await asyncio.wait_for(
            asyncio.gather(*(asyncio.to_thread(w.communicate, timeout=60) for w in workers)),
            timeout=70,
        )
        logs = [stderr.decode() for _, stderr in outputs]
        assert [w.returncode for w in workers] == [0, 0], logs
        async with asyncio.timeout(10):
            await two_delivered.wait()
        # Every delivery was answered (so recorded) before its worker could exit, and with no
        # job left on the queue no worker would make a third.
        assert await redis.zcard(QUEUE) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
        await runner.cleanup()

    assert len(deliveries) == 2
    status = await asyncio.to_thread(status_of, "hooked", env)
    assert status["done"] is True
    for headers, body in deliveries:
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"event": "batch.completed", **status}
        signed = dict(part.split("=", 1) for part in headers["X-Paylinks-Signature"].split(","))
        assert signed.keys() == {"t", "v1"}
        expected = hmac.new(
            WEBHOOK_SECRET.encode(), f"{signed['t']}.".encode() + body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(signed["v1"], expected)
        assert abs(int(signed["t"]) - time.time()) < 120
        wrong = hmac.new(b"not-the-secret", f"{signed['t']}.".encode() + body, hashlib.sha256)
        assert not hmac.compare_digest(signed["v1"], wrong.hexdigest())
    body = json.loads(deliveries[-1][1])
    assert (body["batch"], body["total"], body["created"], body["failed"]) == ("hooked", 5, 5, 0)

    worker_events = [e["event"] for log in logs for e in events(log)]
    assert worker_events.count("batch.completed") == 1
    assert worker_events.count("webhook.retrying") == 1
    assert worker_events.count("webhook.delivered") == 1
    assert "webhook.failed" not in worker_events
    assert WEBHOOK_SECRET not in "\n".join(logs)


# --- Reading batches back, and waiting for one ------------------------------------------------


async def test_batches_lists_recent_batches_newest_first_and_status_prints_json(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(9)
    monday, _ = enqueue_jsonl(
        write_requests(tmp_path / "mon.jsonl", requests[:2]), "--batch", "monday", env=env
    )
    run_workers(env, 1)
    enqueue_jsonl(
        write_requests(tmp_path / "tue.jsonl", requests[2:5]), "--batch", "tuesday", env=env
    )
    enqueue_jsonl(
        write_requests(tmp_path / "wed.jsonl", requests[5:9]), "--batch", "wednesday", env=env
    )

    done = paylinks("batches", "--json", env=env, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(b["batch"], b["total"], b["queued"], b["created"], b["done"]) for b in listed] == [
        ("wednesday", 4, 4, 0, False),
        ("tuesday", 3, 3, 0, False),
        ("monday", 2, 0, 2, True),
    ]
    limited = paylinks("batches", "--json", "--limit", "2", env=env, timeout=30)
    assert [json.loads(line)["batch"] for line in limited.stdout.splitlines()] == [
        "wednesday",
        "tuesday",
    ]

    # Not on a terminal, `status` prints JSON without being asked, the same as `--json`.
    plain = paylinks("status", "monday", env=env, timeout=30)
    assert plain.returncode == 0, plain.stderr.decode()
    assert json.loads(plain.stdout) == listed[2]
    assert json.loads(paylinks("status", "tuesday", "--json", env=env).stdout) == listed[1]
    unknown = paylinks("status", "no-such-batch", env=env, timeout=30)
    assert unknown.returncode == 1
    assert "no-such-batch" in unknown.stderr.decode()
    assert monday["batch"] == "monday"


async def test_enqueue_wait_exits_0_when_all_were_created_and_1_when_some_failed(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="REFUSE-")
    requests = example_requests(6)
    good = write_requests(tmp_path / "good.jsonl", requests[:3])
    mixed = write_requests(
        tmp_path / "mixed.jsonl", [requests[3], *renamed(requests[4:6], "REFUSE-")]
    )
    worker = start_worker(env)
    try:
        done = paylinks("enqueue", str(good), "--json", "--wait", env=env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        report = json.loads(done.stdout)
        assert report["enqueued"] == 3
        status = status_of(report["batch"], env)
        assert (status["created"], status["failed"], status["done"]) == (3, 0, True)

        done = paylinks("enqueue", str(mixed), "--json", "--wait", env=env, timeout=60)
        assert done.returncode == 1, done.stderr.decode()[-2000:]
        report = json.loads(done.stdout)
        assert (report["enqueued"], report["rejected"]) == (3, [])
        status = status_of(report["batch"], env)
        assert (status["created"], status["failed"], status["done"]) == (1, 2, True)
        failed = {
            r["checkoutToken"] for r in results(report["batch"], env) if r["state"] == "failed"
        }
        assert failed == {"REFUSE-0001", "REFUSE-0002"}
    finally:
        log = stop_worker(worker)
    assert worker.returncode == 0, log[-2000:]
    assert completed_events(log)
    assert {e["batch"] for e in completed_events(log)} == {
        json.loads(line)["batch"]
        for line in paylinks("batches", "--json", env=env).stdout.splitlines()
    }
