"""Requests the API refuses: failed at once, kept as dead letters, retried or purged by hand."""

from __future__ import annotations

import json
from pathlib import Path

from redis.asyncio import Redis

from tests.helpers import (
    EXAMPLES,
    Sandbox,
    dead_letters,
    enqueue,
    example_requests,
    paylinks,
    results,
    run_workers,
    write_requests,
)


def some_refused(tmp_path: Path) -> Path:
    requests = example_requests(5)
    for i, request in enumerate(requests[:3]):
        request["checkoutToken"] = f"REFUSE-{i}"
    return write_requests(tmp_path / "refused.jsonl", requests)


async def test_a_request_the_api_refuses_fails_at_once_into_the_dead_letters(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="REFUSE-")
    batch = enqueue(some_refused(tmp_path), env)["batch"]
    run_workers(env, 1)

    states = {r["checkoutToken"]: (r["state"], r["attempts"]) for r in results(batch, env)}
    assert [states[f"REFUSE-{i}"] for i in range(3)] == [("failed", 1)] * 3
    assert sorted(set(states.values())) == [("created", 1), ("failed", 1)]
    letters = dead_letters(env)
    assert sorted(letter["checkoutToken"] for letter in letters) == [
        "REFUSE-0",
        "REFUSE-1",
        "REFUSE-2",
    ]
    for letter in letters:
        assert letter["httpStatus"] == 400
        assert "is not an identity of this account" in letter["error"]
        assert (letter["errorType"], letter["errorCode"]) == ("invalidParam", "11")
        assert letter["traceId"] == json.loads(letter["response"])["traceId"]
        assert letter["attempts"] == 1
        assert letter["batch"] == batch
    by_status = (await sandbox.stats())["by_status"]
    assert by_status["400"] == 3
    # What the provider's support asks for, on each line of the listing.
    listed = paylinks("dead-letters", "list", env=env).stdout.decode().splitlines()
    traces = {letter["traceId"] for letter in letters}
    assert len(listed) == 3
    for line in listed:
        assert "HTTP 400  invalidParam (code 11)  owner.identityId" in line
        assert line.split("  traceId ")[1] in traces
    rows = {r["checkoutToken"]: r for r in results(batch, env)}
    assert {rows[f"REFUSE-{i}"]["traceId"] for i in range(3)} == traces


async def test_dead_letters_retried_under_the_same_key_are_created(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="REFUSE-")
    batch = enqueue(some_refused(tmp_path), env)["batch"]
    run_workers(env, 1)
    await sandbox.faults(reject_prefix="")

    one = paylinks("dead-letters", "retry", "--token", "REFUSE-0", env=env)
    assert json.loads(one.stdout) == {"retried": 1, "busy": 0}
    assert len(dead_letters(env)) == 2
    rest = paylinks("dead-letters", "retry", "--batch", batch, env=env)
    assert json.loads(rest.stdout) == {"retried": 2, "busy": 0}
    status = json.loads(paylinks("status", batch, "--json", env=env).stdout)
    assert (status["queued"], status["failed"], status["done"]) == (3, 0, False)

    run_workers(env, 1)
    assert {r["state"] for r in results(batch, env)} == {"created"}
    assert dead_letters(env) == []
    status = json.loads(paylinks("status", batch, "--json", env=env).stdout)
    assert (status["created"], status["done"]) == (5, True)
    assert (await sandbox.stats())["sessions"] == 5
    # Completed once when the refusals ended it, and once more, not once per retried letter.
    completions = await redis.xrange("paylinks:batches:completed")
    assert [fields["batch"] for _, fields in completions] == [batch, batch]
    assert [fields["failed"] for _, fields in completions] == ["3", "0"]


async def test_purged_dead_letters_are_forgotten_but_their_results_stay(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    await sandbox.faults(reject_prefix="REFUSE-")
    batch = enqueue(some_refused(tmp_path), env)["batch"]
    run_workers(env, 1)
    unknown = paylinks("dead-letters", "purge", "--batch", "another-batch", env=env)
    assert (unknown.returncode, unknown.stdout) == (1, b"")
    purged = paylinks("dead-letters", "purge", "--batch", batch, "--all", env=env)
    assert purged.returncode == 2  # one or the other
    purged = paylinks("dead-letters", "purge", "--all", env=env)
    assert json.loads(purged.stdout) == {"purged": 3}
    assert dead_letters(env) == []
    assert [r["state"] for r in results(batch, env)].count("failed") == 3


async def test_strict_enqueues_nothing_when_a_line_is_bad(
    redis: Redis, env: dict[str, str]
) -> None:
    bad = EXAMPLES / "bad-checkouts.jsonl"
    done = paylinks("enqueue", str(bad), "--strict", "--json", "--batch", "strict", env=env)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["enqueued"] == 0
    assert report["rejected"]
    assert await redis.exists("paylinks:batch:strict") == 0
    assert await redis.zcard("paylinks:queue") == 0

    good = b"".join(line + b"\n" for line in bad.read_bytes().splitlines()[:1])
    done = paylinks("enqueue", "-", "--strict", "--json", env=env, input=good)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["enqueued"] == 1


async def test_a_batch_id_used_again_completes_again_with_all_its_requests(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    requests = example_requests(6)
    first = write_requests(tmp_path / "first.jsonl", requests[:3])
    second = write_requests(tmp_path / "second.jsonl", requests[3:])
    enqueue_into = ("--batch", "nightly")
    assert paylinks("enqueue", str(first), *enqueue_into, env=env).returncode == 0
    run_workers(env, 1)
    assert paylinks("enqueue", str(second), *enqueue_into, env=env).returncode == 0
    status = json.loads(paylinks("status", "nightly", "--json", env=env).stdout)
    assert (status["total"], status["created"], status["done"]) == (6, 3, False)
    run_workers(env, 1)
    status = json.loads(paylinks("status", "nightly", "--json", env=env).stdout)
    assert (status["total"], status["created"], status["done"]) == (6, 6, True)
    assert len(await redis.xrange("paylinks:batches:completed")) == 2
