"""Whole batches through real worker processes, the sandbox over HTTP and a real Redis."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from redis.asyncio import Redis

from paylinks.jobs.layout import DIGEST_LENGTH, checkout_key, idempotency_key, result_key
from paylinks.jobs.records import result_fields
from tests.helpers import (
    ACCESS_TOKEN,
    API_KEY,
    CHECKOUTS,
    Sandbox,
    enqueue,
    events,
    example_requests,
    paylinks,
    results,
    run_workers,
    write_requests,
)


async def test_a_batch_becomes_payment_links_exactly_once(
    redis: Redis, sandbox: Sandbox, env: dict[str, str]
) -> None:
    report = enqueue(CHECKOUTS, env)
    total = len(CHECKOUTS.read_text().splitlines())
    assert report["enqueued"] == total
    assert report["rejected"] == []

    logs = run_workers(env, 2)

    status = json.loads(paylinks("status", report["batch"], "--json", env=env).stdout)
    assert status == {
        "batch": report["batch"],
        "total": total,
        "queued": 0,
        "in_progress": 0,
        "retrying": 0,
        "created": total,
        "failed": 0,
        "done": True,
        "ratelimit_wait_s": 0.0,
    }
    rows = results(report["batch"], env)
    assert len(rows) == total
    assert {r["state"] for r in rows} == {"created"}
    assert len({r["sessionId"] for r in rows}) == total
    assert all(r["url"].startswith("http://127.0.0.1") and r["expiresAt"] for r in rows)
    stats = await sandbox.stats()
    assert stats["sessions"] == total
    assert stats["duplicate_tokens"] == 0

    completed = [e for log in logs for e in events(log) if e["event"] == "batch.completed"]
    assert len(completed) == 1
    created = [e for log in logs for e in events(log) if e["event"] == "checkout.created"]
    assert len(created) == total
    assert all(
        {"batch", "checkout_token", "idempotency_key", "attempt", "duration_ms", "http_status"}
        <= e.keys()
        for e in created
    )


async def test_enqueueing_the_same_file_again_creates_nothing_new(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    path = write_requests(tmp_path / "ten.jsonl", example_requests(10))
    first = enqueue(path, env)
    run_workers(env, 1)
    again = enqueue(path, env)
    assert (again["enqueued"], again["duplicates"]) == (0, 10)
    run_workers(env, 1)
    assert (await sandbox.stats())["sessions"] == 10
    assert {r["state"] for r in results(first["batch"], env)} == {"created"}


async def test_a_created_request_keeps_its_bodys_digest_not_the_body_and_still_tells_a_conflict(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(2)
    path = write_requests(tmp_path / "two.jsonl", requests)
    enqueue(path, env)
    key = idempotency_key(str(requests[0]["checkoutToken"]))
    body: str = await redis.hget(checkout_key(key), "request")  # type: ignore[misc]
    run_workers(env, 1)

    assert not await redis.exists(checkout_key(key)), "a created record becomes its result"
    result: str = await redis.get(result_key(key))
    fields = result_fields(result)
    assert fields["state"] == "created"
    assert fields["request_digest"] == hashlib.sha1(body.encode()).hexdigest()[:DIGEST_LENGTH]
    assert body not in result
    assert await redis.pttl(result_key(key)) > 0, "the result keeps the record's expiry"

    again = enqueue(path, env)
    assert (again["enqueued"], again["duplicates"], again["rejected"]) == (0, 2, [])
    changed = json.loads(json.dumps(requests[0]))
    changed["items"][0]["description"] = "another request"
    done = paylinks(
        "enqueue", str(write_requests(tmp_path / "changed.jsonl", [changed])), "--json", env=env
    )
    reused = json.loads(done.stdout)
    assert reused["enqueued"] == 0
    assert "different body" in reused["rejected"][0]["error"]
    assert (await sandbox.stats())["sessions"] == 2


async def test_transient_api_failures_are_retried_until_created(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(error_rate=0.3, throttle_rate=0.1, retry_after=0)
    report = enqueue(write_requests(tmp_path / "r.jsonl", example_requests(40)), env)
    logs = run_workers(env, 2)
    rows = results(report["batch"], env)
    assert {r["state"] for r in rows} == {"created"}
    assert max(r["attempts"] for r in rows) > 1
    stats = await sandbox.stats()
    assert stats["sessions"] == 40
    assert stats["duplicate_tokens"] == 0
    retrying = [e for log in logs for e in events(log) if e["event"] == "checkout.retrying"]
    assert retrying
    assert {e["http_status"] for e in retrying} <= {500, 429}


async def test_an_answer_lost_to_a_timeout_is_found_in_the_list_not_asked_for_again(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    # The sandbox creates every session but answers only after the client gave up, and
    # ignores Idempotency-Key (its default, as the reference documents none).
    await sandbox.faults(slow_rate=0.3, slow_ms=1500)
    report = enqueue(write_requests(tmp_path / "t.jsonl", example_requests(20)), env)
    run_workers({**env, "PAYLINKS_HTTP_TIMEOUT": "0.5"}, 1)
    rows = results(report["batch"], env)
    assert {(r["state"], r["attempts"]) for r in rows} == {("created", 1)}
    stats = await sandbox.stats()
    assert stats["sessions"] == stats["calls"] == 20
    assert stats["lists"] > 0
    assert stats["duplicate_tokens"] == 0


async def test_a_rejected_request_fails_at_once_with_the_apis_message(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="INV-")
    requests = example_requests(3)
    report = enqueue(write_requests(tmp_path / "f.jsonl", requests), env)
    logs = run_workers(env, 1)
    rows = results(report["batch"], env)
    assert {(r["state"], r["attempts"]) for r in rows} == {("failed", 1)}
    # The sandbox's own words for a refused token, which name the request's owner.
    assert [r["error"] for r in rows] == [
        f"owner.identityId {r['owner']['identityId']!r} is not an identity of this account"
        for r in requests
    ]
    status = json.loads(paylinks("status", report["batch"], "--json", env=env).stdout)
    assert (status["failed"], status["done"]) == (3, True)
    failed = [e for log in logs for e in events(log) if e["event"] == "checkout.failed"]
    assert {e["http_status"] for e in failed} == {400}
    assert (await sandbox.stats())["calls"] == 3


async def test_no_secret_or_personal_data_reaches_a_log_line(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(30)
    await sandbox.faults(error_rate=0.3, retry_after=0)
    path = write_requests(tmp_path / "p.jsonl", requests)
    enqueued = paylinks("enqueue", str(path), env=env)
    logs = [enqueued.stderr.decode(), *run_workers(env, 1)]
    forbidden = {ACCESS_TOKEN, API_KEY}
    for request in requests:
        customer = request.get("customer") or {}
        for field in ("email", "phoneNumber", "documentNumber"):
            if customer.get(field):
                forbidden.add(customer[field])
    assert len(forbidden) > 10, "the examples should carry personal data to look for"
    text = "\n".join(logs)
    assert "checkout.created" in text
    leaked = sorted(value for value in forbidden if value in text)
    assert leaked == []
    assert not re.search(r"[\w.+-]+@[\w-]+\.\w+", text)


async def test_the_apis_words_quoting_the_request_are_scrubbed_from_the_log(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    # Our intake takes any e-mail string; the sandbox, as a real API would, refuses these and
    # quotes them back: `customer.email 'ana.0@mail-host' is not valid`.
    requests = example_requests(3)
    for i, request in enumerate(requests):
        request["customer"] = {"firstName": "Ana", "email": f"ana.{i}@mail-host"}
    path = write_requests(tmp_path / "emails.jsonl", requests)
    enqueued = paylinks("enqueue", str(path), "--json", env=env)
    logs = [enqueued.stderr.decode(), *run_workers(env, 1)]
    rows = results(json.loads(enqueued.stdout)["batch"], env)
    assert {r["state"] for r in rows} == {"failed"}
    assert all("customer.email" in r["error"] for r in rows), rows
    failed = [e for log in logs for e in events(log) if e["event"] == "checkout.failed"]
    assert {e["http_status"] for e in failed} == {400}
    # The API's words are logged, without what they quoted of the request.
    assert all("customer.email" in e["reason"] for e in failed), failed
    text = "\n".join(logs)
    assert [r["customer"]["email"] for r in requests if r["customer"]["email"] in text] == []


def test_a_worker_without_credentials_stops_with_one_clear_line(env: dict[str, str]) -> None:
    without = {k: v for k, v in env.items() if k != "CONOMY_API_KEY"}
    done = paylinks("worker", env=without)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "CONOMY_API_KEY" in lines[0]
    assert "Traceback" not in done.stderr.decode()
