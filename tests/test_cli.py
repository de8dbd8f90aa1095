"""The `paylinks` command as scripts use it: run as a process, its output and exit codes read."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import orjson
from redis.asyncio import Redis

from paylinks.jobs.layout import checkout_key, idempotency_key
from paylinks.jobs.models import CheckoutRequest
from tests.helpers import EXAMPLES, paylinks

BAD = EXAMPLES / "bad-checkouts.jsonl"


def first_request() -> dict[str, object]:
    request: dict[str, object] = json.loads(
        (EXAMPLES / "checkouts.jsonl").read_text().splitlines()[0]
    )
    return request


async def test_bad_lines_are_named_and_the_good_ones_enqueued(
    redis: Redis, env: dict[str, str]
) -> None:
    done = paylinks("enqueue", str(BAD), "--json", env=env)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    lines = BAD.read_text().splitlines()
    rejected = {r["line"]: r["error"] for r in report["rejected"]}
    assert report["enqueued"] + len(rejected) == sum(1 for line in lines if line.strip())
    assert report["enqueued"] > 0
    assert all(number <= len(lines) for number in rejected)
    assert any("invalid JSON" in error for error in rejected.values())
    assert any("checkoutTokn: unknown field" in error for error in rejected.values())
    status = json.loads(paylinks("status", report["batch"], "--json", env=env).stdout)
    assert status["total"] == report["enqueued"]


async def test_stdin_and_the_plain_output_give_the_batch_id(
    redis: Redis, env: dict[str, str]
) -> None:
    body = json.dumps(first_request()).encode() + b"\n"
    done = paylinks("enqueue", "-", "--batch", "nightly-42", env=env, input=body)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "nightly-42"
    status = json.loads(paylinks("status", "nightly-42", env=env).stdout)
    assert (status["total"], status["queued"], status["done"]) == (1, 1, False)


async def test_a_token_enqueued_twice_is_a_duplicate_and_with_another_body_a_conflict(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    request = first_request()
    changed = {**request, "duration": 60}
    # The same request written another way: other key order, no spaces.
    reordered = json.dumps(dict(reversed(request.items())), separators=(",", ":"))
    path = tmp_path / "twice.jsonl"
    path.write_text(
        f"{json.dumps(request)}\n{json.dumps(request)}\n{json.dumps(changed)}\n{reordered}\n"
    )
    done = paylinks("enqueue", str(path), "--json", env=env)
    report = json.loads(done.stdout)
    assert (report["enqueued"], report["duplicates"]) == (1, 2)
    assert [r["line"] for r in report["rejected"]] == [3]
    assert "different body" in report["rejected"][0]["error"]
    assert done.returncode == 1
    assert await redis.zcard("paylinks:queue") == 1


async def test_a_record_of_an_earlier_release_with_its_body_in_model_order_is_a_duplicate(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    request = first_request()
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(request) + "\n")
    assert paylinks("enqueue", str(path), env=env).returncode == 0
    # Earlier releases stored the model's dump, keys in field order, not sorted.
    record = checkout_key(idempotency_key(str(request["checkoutToken"])))
    model_order = orjson.dumps(CheckoutRequest.model_validate(request).wire())
    assert model_order.decode() != await redis.hget(record, "request")  # type: ignore[misc]
    await redis.hset(record, "request", model_order)  # type: ignore[misc]
    done = paylinks("enqueue", str(path), "--json", env=env)
    report = json.loads(done.stdout)
    assert (report["enqueued"], report["duplicates"], report["rejected"]) == (0, 1, [])
    assert done.returncode == 0


async def test_results_are_pending_until_a_worker_ran_and_export_as_csv(
    redis: Redis, env: dict[str, str]
) -> None:
    body = json.dumps(first_request()).encode() + b"\n"
    paylinks("enqueue", "-", "--batch", "b1", env=env, input=body)
    done = paylinks("results", "b1", "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode())))
    assert [(r["checkoutToken"], r["state"]) for r in rows] == [
        (first_request()["checkoutToken"], "pending")
    ]
    assert list(rows[0]) == [
        "checkoutToken",
        "state",
        "sessionId",
        "url",
        "expiresAt",
        "attempts",
        "error",
        "errorCode",
        "errorType",
        "traceId",
        "duplicateSessions",
    ]


async def test_an_unknown_batch_is_an_error(redis: Redis, env: dict[str, str]) -> None:
    done = paylinks("status", "no-such-batch", "--json", env=env)
    assert done.returncode == 1
    assert b"no-such-batch" in done.stderr


def test_a_malformed_setting_stops_with_exit_code_2(env: dict[str, str]) -> None:
    done = paylinks("enqueue", "-", env={**env, "REDIS_URL": "not a url"}, input=b"")
    assert done.returncode == 2
    assert done.stderr.decode().startswith("paylinks: configuration error: REDIS_URL")
    assert "Traceback" not in done.stderr.decode()


def test_schema_prints_the_request_json_schema_without_redis(tmp_path: Path) -> None:
    # Producers that are not Python validate against it; it needs no Redis to print.
    env = {"PATH": os.environ["PATH"], "PAYLINKS_DEFAULT_DURATION": "600"}
    done = paylinks("schema", env=env)
    assert done.returncode == 0, done.stderr.decode()
    schema = json.loads(done.stdout)
    assert "checkoutToken" in schema["required"]
    assert schema["properties"]["duration"]["default"] == 600
    assert "failedUrl" in schema["properties"]
    assert schema["$defs"]["Tax"]["properties"]["type"]["enum"] == ["FIXED", "PERCENTAGE"]

    done = paylinks("schema", env=env | {"PAYLINKS_DEFAULT_DURATION": "10"})
    assert done.returncode == 2
    assert done.stderr.decode().startswith(
        "paylinks: configuration error: PAYLINKS_DEFAULT_DURATION"
    )


async def test_a_request_without_duration_is_stored_with_the_configured_default(
    redis: Redis, env: dict[str, str]
) -> None:
    request = first_request()
    del request["duration"]
    body = json.dumps(request).encode() + b"\n"
    done = paylinks("enqueue", "-", env=env | {"PAYLINKS_DEFAULT_DURATION": "7200"}, input=body)
    assert done.returncode == 0, done.stderr.decode()
    key = checkout_key(idempotency_key(str(request["checkoutToken"])))
    stored = json.loads(await redis.hget(key, "request"))
    assert stored == request | {"duration": 7200}
