"""The dashboard over HTTP: its pages on a real batch, and who may see them and act from them."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from paylinks.devtools.ports import free_port
from paylinks.jobs import layout
from paylinks.jobs.layout import BatchField, RecordField, State
from paylinks.jobs.records import result_fields
from tests.helpers import (
    REFUSED,
    Sandbox,
    dashboard,
    enqueue,
    example_requests,
    paylinks,
    run_workers,
    spawn_worker,
    write_requests,
)

TOKEN = "dashboard-token-for-the-tests-0123456789"
# Generous: the machine is shared, and this is a deadline, not an expectation.
DEADLINE_S = 120


@asynccontextmanager
async def browser_like(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that keeps cookies as a browser does (also for a loopback address)."""
    async with aiohttp.ClientSession(
        base, cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept": "text/html"}
    ) as http:
        yield http


async def text(http: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    async with http.get(path, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == status, body[:500]
        return body


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def run_refused_batch(
    sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> tuple[str, list[dict[str, Any]]]:
    requests = example_requests(5)
    for token, request in zip(REFUSED, requests, strict=False):
        request["checkoutToken"] = token
    await sandbox.faults(reject_prefix="REFUSE-")
    batch: str = enqueue(write_requests(tmp_path / "refused.jsonl", requests), env)["batch"]
    run_workers(env, 1)
    return batch, requests


def personal_values(requests: list[dict[str, Any]]) -> list[str]:
    found = []
    for request in requests:
        customer = request.get("customer") or {}
        for field in ("email", "phoneNumber", "documentNumber", "firstName", "lastName"):
            if customer.get(field):
                found.append(customer[field])
    assert found
    return found


def test_it_refuses_to_listen_beyond_this_host_without_a_token(env: dict[str, str]) -> None:
    done = paylinks("dashboard", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "PAYLINKS_DASHBOARD_TOKEN" in lines[0]


async def test_the_pages_show_a_batch_its_failures_and_requests_without_personal_data(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch, requests = await run_refused_batch(sandbox, env, tmp_path)
    with dashboard(env) as base:
        async with browser_like(base) as http:
            pages = {}
            listing = pages["list"] = await text(http, "/")
            assert batch in listing
            assert "completed " in listing

            page = pages["batch"] = await text(http, f"/batches/{batch}")
            # The failures, grouped: one reason, three requests, the API's type and code shown.
            assert re.search(r"<td>3</td><td>400</td><td>invalidParam</td><td>11</td>", page)
            assert "is not an identity of this account" in page
            for token in (*REFUSED, requests[4]["checkoutToken"]):
                assert token in page

            found = pages["search"] = await text(http, f"/batches/{batch}?token=REFUSE-1")
            listed = found.split("<h2>Requests</h2>")[1]
            assert "REFUSE-1" in listed
            assert "REFUSE-2" not in listed

            key = layout.idempotency_key("REFUSE-0")
            async with http.get("/search?token=REFUSE-0", allow_redirects=False) as response:
                assert response.status == 303
                assert response.headers["Location"] == f"/requests/{key}"
            one = pages["request"] = await text(http, f"/requests/{key}")
            for shown in ("failed", "400", "invalidParam", key, batch, "Retry it"):
                assert shown in one
            created = layout.idempotency_key(requests[4]["checkoutToken"])
            link = pages["created"] = await text(http, f"/requests/{created}")
            session = result_fields(await redis.get(layout.result_key(created)))
            assert session[RecordField.SESSION_ID] in link
            assert session[RecordField.URL] in link

            letters = pages["letters"] = await text(http, f"/dead-letters?batch={batch}")
            assert all(token in letters for token in REFUSED)
            fleet = pages["fleet"] = await text(http, "/fleet")
            assert "0 jobs, 0 due now" in fleet

            # The live updates' answer: the batch's counts under their names in Redis.
            async with http.get(f"/api/batches?id={batch}") as response:
                status = (await response.json())[batch]
            counts = (status[BatchField.TOTAL], status[State.CREATED], status[State.FAILED])
            assert counts == (5, 2, 3)
            assert status["done"] is True

            async with http.get(f"/batches/{batch}/results.csv") as response:
                assert response.headers["Content-Type"].startswith("text/csv")
                csv = await response.text()
            expected = paylinks("results", batch, "--format", "csv", env=env).stdout.decode()
            assert csv.splitlines() == expected.splitlines()

            await text(http, "/batches/no-such-batch", 404)
            await text(http, "/requests/no-such-key", 404)

    for name, html in pages.items():
        for value in personal_values(requests):
            assert value not in html, f"{value!r} on the {name} page"


async def test_without_the_token_a_request_gets_401_and_no_data(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch, _ = await run_refused_batch(sandbox, env, tmp_path)
    key = layout.idempotency_key("REFUSE-0")
    paths = [
        "/",
        f"/batches/{batch}",
        f"/batches/{batch}/results.csv",
        f"/api/batches?id={batch}",
        f"/requests/{key}",
        "/search?token=REFUSE-0",
        "/dead-letters",
        "/fleet",
    ]
    with dashboard(env | {"PAYLINKS_DASHBOARD_TOKEN": TOKEN}) as base:
        async with browser_like(base) as http:
            for path in paths:
                for headers in ({}, {"Authorization": "Bearer not-the-token"}):
                    async with http.get(path, headers=headers, allow_redirects=False) as response:
                        body = await response.text()
                        assert response.status == 401, path
                        assert "set-cookie" not in response.headers
                    # The login form sends the browser back to the path asked for, and only that.
                    for secret in (batch, "REFUSE-0", key, "invalidParam"):
                        assert secret in path or secret not in body, (path, secret)
            for action in ("/dead-letters/retry", "/dead-letters/purge"):
                async with http.post(action, data={"batch": batch}) as response:
                    assert response.status == 401
            assert await redis.zcard(layout.DEAD_LETTERS) == 3

            # A wrong token at the login form: still nothing.
            async with http.post("/login", data={"token": "wrong", "next": "/"}) as response:
                assert response.status == 401
            await text(http, "/", 401)

            # The right one: an HttpOnly, SameSite=Strict session, and the pages.
            async with http.post(
                "/login", data={"token": TOKEN, "next": "/fleet"}, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "/fleet"
                cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert batch in await text(http, "/")

        async with aiohttp.ClientSession(base) as script:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with script.get(f"/batches/{batch}", headers=bearer) as response:
                assert response.status == 200
                assert "REFUSE-0" in await response.text()


async def test_a_cross_site_post_changes_nothing(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch, _ = await run_refused_batch(sandbox, env, tmp_path)
    with dashboard(env) as base:
        async with browser_like(base) as http:
            csrf = csrf_of(await text(http, f"/dead-letters?batch={batch}"))
            form = {"batch": batch, "csrf": csrf, "back": "/dead-letters"}
            forged: list[tuple[dict[str, str], dict[str, str]]] = [
                (form, {"Origin": "http://evil.example"}),
                (form, {"Sec-Fetch-Site": "cross-site"}),
                (form, {"Sec-Fetch-Site": "same-site"}),
                ({"batch": batch}, {}),
                ({**form, "csrf": "0" * 64}, {}),
            ]
            for action in ("/dead-letters/retry", "/dead-letters/purge"):
                for data, headers in forged:
                    async with http.post(
                        action, data=data, headers=headers, allow_redirects=False
                    ) as response:
                        assert response.status == 403, (action, data, headers)
            # Another browser's session: its own CSRF token does not fit this session.
            async with browser_like(base) as other:
                theirs = csrf_of(await text(other, f"/dead-letters?batch={batch}"))
            async with http.post(
                "/dead-letters/purge", data={**form, "csrf": theirs}, allow_redirects=False
            ) as response:
                assert response.status == 403
            assert await redis.zcard(layout.DEAD_LETTERS) == 3
            status = await redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
            assert (status[State.FAILED], status[State.QUEUED]) == ("3", "0")

            # The dashboard's own form, from its own origin: the letters are queued again.
            await sandbox.faults(reject_prefix="")
            async with http.post(
                "/dead-letters/retry",
                data=form,
                headers={"Origin": base, "Sec-Fetch-Site": "same-origin"},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "/dead-letters"
            assert await redis.zcard(layout.DEAD_LETTERS) == 0
            assert "Queued again: 3." in await text(http, "/dead-letters")
            run_workers(env, 1)
            status = await redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
            assert status[State.CREATED] == "5"


async def test_read_only_offers_no_action_and_refuses_them(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch, _ = await run_refused_batch(sandbox, env, tmp_path)
    with dashboard(env, "--read-only") as base:
        async with browser_like(base) as http:
            pages = [
                await text(http, f"/dead-letters?batch={batch}"),
                await text(http, f"/batches/{batch}"),
                await text(http, f"/requests/{layout.idempotency_key('REFUSE-0')}"),
            ]
            for page in pages:
                assert "read-only" in page
                assert 'method="post"' not in page
            for action in ("/dead-letters/retry", "/dead-letters/purge"):
                async with http.post(action, data={"batch": batch}) as response:
                    assert response.status == 403
    assert await redis.zcard(layout.DEAD_LETTERS) == 3


async def test_purge_from_the_dashboard_forgets_a_batchs_dead_letters(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    batch, _ = await run_refused_batch(sandbox, env, tmp_path)
    with dashboard(env) as base:
        async with browser_like(base) as http:
            page = await text(http, f"/dead-letters?batch={batch}")
            back = f"/dead-letters?batch={batch}"
            async with http.post(
                "/dead-letters/purge",
                data={"batch": batch, "csrf": csrf_of(page), "back": back},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
            assert "Purged 3 dead letters" in await text(http, back)
    assert await redis.zcard(layout.DEAD_LETTERS) == 0
    status = await redis.hgetall(layout.batch_key(batch))  # type: ignore[misc]
    assert status[State.FAILED] == "3"


async def workers_alive(http: aiohttp.ClientSession) -> tuple[int, str]:
    """The fleet page's count of workers alive, and the page."""
    page = await text(http, "/fleet")
    found = re.search(r'data-field="workers">(\d+)<', page)
    assert found, "no count of workers on the fleet page"
    return int(found.group(1)), page


async def until_workers_alive(http: aiohttp.ClientSession, count: int) -> str:
    """The fleet page once it shows `count` workers alive."""
    deadline = time.monotonic() + DEADLINE_S
    while (found := await workers_alive(http))[0] != count:
        assert time.monotonic() < deadline, f"{found[0]} workers alive, not {count}"
        await asyncio.sleep(0.2)
    return found[1]


async def test_the_fleet_page_counts_each_worker_alive_and_drops_one_that_stopped(
    redis: Redis, sandbox: Sandbox, env: dict[str, str], tmp_path: Path
) -> None:
    env = env | {"PAYLINKS_HEALTH_CHECK_INTERVAL": "1"}
    workers = [spawn_worker(env, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        with dashboard(env) as base:
            async with browser_like(base) as http:
                page = await until_workers_alive(http, 2)
                keys = [layout.worker_health_key(socket.gethostname(), w.pid) for w in workers]
                for worker, key in zip(workers, keys, strict=True):
                    assert f"<td>{worker.pid}</td>" in page
                    assert "j_complete=" in await redis.get(key)
                    assert await redis.zscore(layout.WORKERS, key) is not None

                # SIGTERM: the worker deletes its own record and its member as it stops.
                workers[0].terminate()
                assert workers[0].wait(60) == 0
                assert await redis.zscore(layout.WORKERS, keys[0]) is None
                alive, page = await workers_alive(http)
                assert alive == 1
                assert f"<td>{workers[0].pid}</td>" not in page
                assert f"<td>{workers[1].pid}</td>" in page

                # SIGKILL: nothing deletes them; the record expires a second after the next
                # was due, and the page then prunes the member.
                workers[1].kill()
                workers[1].wait(60)
                page = await until_workers_alive(http, 0)
                assert "No worker alive" in page
                deadline = time.monotonic() + DEADLINE_S
                while await redis.zscore(layout.WORKERS, keys[1]) is not None:
                    assert time.monotonic() < deadline, "the killed worker's member stayed"
                    await workers_alive(http)
                    await asyncio.sleep(0.2)
                assert await redis.zcard(layout.WORKERS) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(60)


async def scans(redis: Redis) -> int:
    """SCAN calls the test Redis has answered since it started."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def test_the_fleet_page_reads_the_registry_and_never_scans(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    env = env | {"PAYLINKS_HEALTH_CHECK_INTERVAL": "1"}
    worker = spawn_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (named := await redis.zrange(layout.CREDENTIALS, 0, -1)):
            assert time.monotonic() < deadline, "the worker registered no credential"
            await asyncio.sleep(0.2)
        [credential] = named
        # Limiter state, as a 429 leaves it: a pause of a minute.
        seconds, micros = await redis.time()
        until = seconds * 1_000_000 + micros + 60_000_000
        await redis.set(layout.limiter_keys(credential).pause, until, px=60_000)
        # A credential no worker has named for long and with no limiter state, and a killed
        # worker's member: both forgotten by the page.
        await redis.zadd(layout.CREDENTIALS, {"old-credential": 1})
        dead = layout.worker_health_key("gone.example.com", 1)
        await redis.zadd(layout.WORKERS, {dead: 1})
        with dashboard(env) as base:
            async with browser_like(base) as http:
                before = await scans(redis)
                page = await until_workers_alive(http, 1)
                assert f"<td>{worker.pid}</td>" in page
                assert f"<code>{credential}</code>" in page
                assert re.search(r"paused \d+\.\d s more", page)
                assert "old-credential" not in page
                assert await scans(redis) == before
        assert await redis.zrange(layout.CREDENTIALS, 0, -1) == [credential]
        assert await redis.zscore(layout.WORKERS, dead) is None
    finally:
        worker.terminate()
        worker.wait(60)


async def test_arqs_health_check_finds_no_per_worker_record_and_says_so(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    """What the README tells operators: `arq ... --check` looks for the record of its own
    process, which no worker writes, so it fails even with workers alive."""
    worker = spawn_worker(env, tmp_path / "worker.log")
    try:
        key = layout.worker_health_key(socket.gethostname(), worker.pid)
        deadline = time.monotonic() + DEADLINE_S
        while not await redis.exists(key):
            assert time.monotonic() < deadline, "the worker wrote no health record"
            await asyncio.sleep(0.2)
        arq = Path(sys.executable).parent / "arq"
        check = await asyncio.create_subprocess_exec(
            str(arq),
            "paylinks.worker.app.WorkerSettings",
            "--check",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(check.communicate(), DEADLINE_S)
        assert check.returncode == 1
        assert "no health check sentinel value found" in stderr.decode()
    finally:
        worker.terminate()
        worker.wait(60)
