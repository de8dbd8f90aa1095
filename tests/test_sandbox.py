"""The local sandbox answers like the Conomy reference and injects the faults it is asked for."""

from __future__ import annotations

import argparse
import ast
import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from paylinks.devtools.sandbox import build_app
from paylinks.devtools.sandbox_options import SandboxOptions, add_arguments, options_from
from paylinks.jobs.intake import read_json_lines
from tests.helpers import CHECKOUTS, ROOT

CHECKOUT = "/sandbox/checkout-sessions"
HEADERS = {
    "Authorization": "Bearer sandbox-token",
    "x-api-key": "sandbox-key",
    "conomyhq-api-version": "24-04-2025",
}

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]


def checkout_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "checkoutToken": "inv-1",
        "items": [
            {
                "preTaxAmount": "1000",
                "totalAmount": "1190",
                "description": "Invoice 1",
                "tax": {"name": "IVA", "type": "PERCENTAGE", "value": "19", "amount": "190"},
            }
        ],
        "currency": "CLP",
        "paymentMethodsAllowed": ["CARD"],
        "destinations": [
            {
                "type": "ACCOUNT",
                "amount": "1190",
                "account": {
                    "type": "CHECKING",
                    "currency": "CLP",
                    "accountNumber": "123",
                    "accountHolder": "ACME",
                },
            }
        ],
        "duration": 86400,
        "owner": {"identityId": "idn_1"},
    }
    return copy.deepcopy(body | changes)


@pytest.fixture
def options() -> SandboxOptions:
    return SandboxOptions(seed=1)


@pytest.fixture
async def client(options: SandboxOptions) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(options))) as client:
        yield client


async def post(
    client: Client, body: Any, key: str | None = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    sent = HEADERS | ({"Idempotency-Key": key} if key else {}) | headers
    async with client.post(CHECKOUT, json=body, headers=sent) as response:
        return response.status, await response.json()


async def stats(client: Client) -> dict[str, Any]:
    async with client.get("/sandbox/_control/stats") as response:
        return await response.json()  # type: ignore[no-any-return]


async def test_a_good_request_creates_a_session(client: Client) -> None:
    status, session = await post(client, checkout_body(successUrl="https://shop.example/ok"))

    assert status == 201
    assert session["id"].startswith("cs_")
    assert (session["preTaxAmount"], session["totalAmount"]) == ("1000", "1190")
    assert session["status"] == "ACTIVE"
    assert session["checkoutToken"] == "inv-1"
    assert session["items"] == checkout_body()["items"]
    assert session["redirectUrl"] == "https://shop.example/ok"
    assert session["paymentConfigs"] == [
        {"currency": "CLP", "product": "CHECKOUT", "exchangeRate": "1", "paymentMethods": ["CARD"]}
    ]
    assert session["url"] == str(client.make_url(f"/sandbox/pay/{session['id']}"))
    assert session["createdAt"].endswith("Z")
    assert len(session["createdAt"]) == len("2024-01-15T10:30:00.000Z")
    created, expires = (datetime.fromisoformat(session[f]) for f in ("createdAt", "expiresAt"))
    assert (expires - created).total_seconds() == 86400

    async with client.get(f"{CHECKOUT}/{session['id']}", headers=HEADERS) as response:
        assert response.status == 200
        assert await response.json() == session


async def test_duration_sets_the_expiry(client: Client) -> None:
    _, session = await post(client, checkout_body(duration=30))
    created, expires = (datetime.fromisoformat(session[f]) for f in ("createdAt", "expiresAt"))
    assert (expires - created).total_seconds() == 30


@pytest.mark.parametrize(
    ("headers", "status", "named"),
    [
        ({"Authorization": ""}, 401, "Authorization"),
        ({"Authorization": "Bearer not-issued"}, 401, "token"),
        ({"x-api-key": "wrong"}, 403, "x-api-key"),
        ({"conomyhq-api-version": "01-01-2020"}, 400, "conomyhq-api-version"),
    ],
)
async def test_bad_headers_are_refused(
    client: Client, headers: dict[str, str], status: int, named: str
) -> None:
    got, answer = await post(client, checkout_body(), **headers)
    assert got == status
    assert named in answer["detail"]
    assert (await stats(client))["sessions"] == 0


async def test_a_body_that_is_not_a_json_object_is_refused(client: Client) -> None:
    sent = HEADERS | {"Content-Type": "text/plain"}
    async with client.post(CHECKOUT, data="{}", headers=sent) as response:
        assert response.status == 415
    status, answer = await post(client, ["not", "an", "object"])
    assert status == 400
    assert (answer["code"], answer["type"]) == ("14", "parsingResource")


def changed(path: str, value: Any) -> dict[str, Any]:
    """checkout_body() with the field at a dotted `path` (list indexes as numbers) set to
    `value`, or removed when `value` is DELETE."""
    body = checkout_body()
    *parents, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    target: Any = body
    for step in parents:
        target = target[step]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return body


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "code", "detail"),
    [
        ("items", DELETE, "12", "items is required"),
        ("owner.identityId", DELETE, "12", "owner.identityId is required"),
        ("items.0.tax.name", DELETE, "12", "items[0].tax.name is required"),
        ("destinations.0.account.accountHolder", DELETE, "12", "accountHolder is required"),
        ("duration", 29, "11", "duration 29 is not a whole number of seconds of at least 30"),
        ("currency", "JPY", "11", "currency 'JPY' is not one of"),
        ("paymentMethodsAllowed", [], "11", "paymentMethodsAllowed needs at least 1"),
        ("paymentMethodsAllowed.0", "BANK_TRANSFER", "11", "'BANK_TRANSFER' is not one of"),
        ("items.0.tax.type", "fixed", "11", "items[0].tax.type 'fixed' is not one of"),
        ("destinations.0.account.type", "CURRENT", "11", "'CURRENT' is not one of"),
        ("items.0.preTaxAmount", 1000, "11", "items[0].preTaxAmount 1000 is not a decimal"),
        ("items.0.totalAmount", "1200", "11", "'1200' is not preTaxAmount plus tax.amount"),
        ("destinations.0.amount", "1190.0", "11", "has more decimals than CLP allows (0)"),
        ("customer", {"documentType": "ID"}, "11", "customer.documentType 'ID' is not one of"),
        ("failureUrl", "https://x.example/f", "11", "failureUrl is not a field the API knows"),
        ("payment_methods_allowed", ["CARD"], "11", "payment_methods_allowed is not a field"),
    ],
)
async def test_bodies_our_intake_refuses_are_refused_with_the_documented_error_body(
    client: Client, path: str, value: Any, code: str, detail: str
) -> None:
    body = changed(path, value)
    [(_, ours)] = read_json_lines([json.dumps(body)])
    assert isinstance(ours, str), "paylinks' intake must refuse it too"
    status, answer = await post(client, body)
    assert status == 400
    assert set(answer) == {"status", "code", "type", "detail", "traceId"}
    assert (answer["status"], answer["code"]) == (400, code)
    assert answer["type"] == {"11": "invalidParam", "12": "missingParam"}[code]
    assert detail in answer["detail"]
    assert (await stats(client))["sessions"] == 0


async def test_duration_is_required_as_the_published_schema_says(client: Client) -> None:
    # paylinks' intake fills in its default instead (PAYLINKS_DEFAULT_DURATION).
    status, answer = await post(client, changed("duration", DELETE))
    assert (status, answer["code"], answer["detail"]) == (400, "12", "duration is required")


async def test_the_detail_quotes_what_the_request_carried(client: Client) -> None:
    # As a real API's words do, so that the worker's scrubbing of them is exercised.
    status, answer = await post(client, changed("customer", {"email": "ana@example"}))
    assert (status, answer["detail"]) == (400, "customer.email 'ana@example' is not valid")


async def test_every_example_line_is_accepted(client: Client) -> None:
    for line in CHECKOUTS.read_text().splitlines():
        status, session = await post(client, json.loads(line))
        assert status == 201, session
    assert (await stats(client))["sessions"] == len(CHECKOUTS.read_text().splitlines())


def test_the_sandbox_judges_bodies_without_paylinks_models() -> None:
    # Its rules are its own reading of the reference: a bug in ours must not be mirrored.
    for module in ("sandbox.py", "sandbox_sessions.py", "contract.py"):
        tree = ast.parse((ROOT / "devtools" / module).read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [name for name in imported if name and name.startswith("paylinks.jobs")]


async def test_an_idempotency_key_replays_the_first_answer(
    client: Client, options: SandboxOptions
) -> None:
    options.honour_idempotency_key = True
    first = await post(client, checkout_body(), key="k1")
    again = await post(client, checkout_body(), key="k1")
    assert first == again
    assert first[0] == 201
    counts = await stats(client)
    assert (counts["sessions"], counts["calls"], counts["by_status"]) == (1, 2, {"201": 2})


async def test_an_idempotency_key_with_another_body_is_a_conflict(
    client: Client, options: SandboxOptions
) -> None:
    options.honour_idempotency_key = True
    await post(client, checkout_body(), key="k1")
    status, answer = await post(client, checkout_body(duration=60), key="k1")
    assert status == 409
    assert (answer["code"], answer["type"]) == ("13", "alreadyExist")


async def test_concurrent_calls_with_one_key_create_one_session(
    client: Client, options: SandboxOptions
) -> None:
    options.honour_idempotency_key = True
    options.latency_ms = 20  # so the calls overlap inside the sandbox
    answers = await asyncio.gather(*(post(client, checkout_body(), key="k1") for _ in range(10)))
    assert {session["id"] for _, session in answers} == {answers[0][1]["id"]}
    assert (await stats(client))["sessions"] == 1


async def test_without_a_key_every_call_creates_a_session(client: Client) -> None:
    await post(client, checkout_body())
    await post(client, checkout_body())
    counts = await stats(client)
    assert (counts["sessions"], counts["duplicate_tokens"]) == (2, 1)


async def test_error_rate_answers_500_without_a_session(
    client: Client, options: SandboxOptions
) -> None:
    options.error_rate = 1
    status, answer = await post(client, checkout_body(), key="k1")
    assert status == 500
    assert (answer["status"], answer["code"], answer["type"]) == (500, "01", "serverError")
    assert answer["traceId"]
    assert (await stats(client))["sessions"] == 0


async def test_throttle_rate_set_over_http_answers_429_with_retry_after(client: Client) -> None:
    faults = {"throttle_rate": 1, "retry_after": 7}
    async with client.post("/sandbox/_control/faults", json=faults) as response:
        assert (await response.json())["throttle_rate"] == 1
    async with client.post(CHECKOUT, json=checkout_body(), headers=HEADERS) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
    async with client.post("/sandbox/_control/faults", json={"error_rate": 2}) as response:
        assert response.status == 400


async def test_slow_answers_arrive_late_but_the_session_is_stored(
    client: Client, options: SandboxOptions
) -> None:
    options.slow_rate, options.slow_ms = 1, 300
    options.honour_idempotency_key = True
    started = time.monotonic()
    assert (await post(client, checkout_body()))[0] == 201
    assert time.monotonic() - started >= 0.3

    late = checkout_body(checkoutToken="inv-2")
    sent = HEADERS | {"Idempotency-Key": "k2"}
    with pytest.raises(TimeoutError):
        await client.post(CHECKOUT, json=late, headers=sent, timeout=aiohttp.ClientTimeout(0.1))
    assert (await stats(client))["sessions"] == 2

    options.slow_rate = 0
    status, session = await post(client, late, key="k2")
    assert (status, session["checkoutToken"]) == (201, "inv-2")
    assert (await stats(client))["sessions"] == 2


CREDENTIALS = {"clientId": "sandbox-client", "clientSecret": "sandbox-secret"}


async def issue(client: Client, body: Any, api_key: str = "sandbox-key") -> tuple[int, Any]:
    async with client.post("/sandbox/auth", json=body, headers={"x-api-key": api_key}) as answer:
        return answer.status, await answer.json()


@pytest.mark.parametrize(
    ("body", "api_key", "status", "code"),
    [
        (CREDENTIALS, "wrong", 403, "43"),
        (CREDENTIALS | {"clientSecret": "x"}, "sandbox-key", 401, "41"),
        (CREDENTIALS | {"clientId": "other"}, "sandbox-key", 401, "41"),
        ({"clientId": "sandbox-client"}, "sandbox-key", 400, "12"),
        (
            {"client_id": "sandbox-client", "client_secret": "sandbox-secret"},
            "sandbox-key",
            400,
            "12",
        ),
    ],
)
async def test_auth_refuses_wrong_credentials_with_the_documented_error_body(
    client: Client, body: dict[str, str], api_key: str, status: int, code: str
) -> None:
    got, answer = await issue(client, body, api_key)
    assert (got, answer["status"], answer["code"]) == (status, status, code)
    assert set(answer) == {"status", "code", "type", "detail", "traceId"}
    assert (await stats(client))["tokens_issued"] == 0


async def test_issued_tokens_are_accepted_until_they_expire(
    client: Client, options: SandboxOptions
) -> None:
    status, issued = await issue(client, CREDENTIALS)
    assert status == 200
    assert set(issued) == {"accessToken", "tokenType", "expiresIn"}
    assert (issued["tokenType"], issued["expiresIn"]) == ("Bearer", 3600)
    bearer = f"Bearer {issued['accessToken']}"
    assert (await post(client, checkout_body(), Authorization=bearer))[0] == 201

    options.token_ttl = 0
    expired = f"Bearer {(await issue(client, CREDENTIALS))[1]['accessToken']}"
    assert (await post(client, checkout_body(), Authorization=expired))[0] == 401
    assert (await stats(client))["tokens_issued"] == 2


@pytest.mark.parametrize(
    ("currency", "amounts", "pre_tax", "total"),
    [("CLP", ["1000", "500"], "1500", "1500"), ("USD", ["10.5", "2"], "12.50", "12.50")],
)
async def test_sums_keep_the_currency_decimals(
    client: Client, currency: str, amounts: list[str], pre_tax: str, total: str
) -> None:
    items = [{"preTaxAmount": a, "totalAmount": a, "description": "x"} for a in amounts]
    destination = checkout_body()["destinations"][0] | {"amount": total}
    body = checkout_body(currency=currency, items=items, destinations=[destination])
    status, session = await post(client, body)
    assert status == 201, session
    assert (session["preTaxAmount"], session["totalAmount"]) == (pre_tax, total)


async def test_controls_show_requests_and_reset(client: Client) -> None:
    await post(client, checkout_body(), key="k1")
    await post(client, {"checkoutToken": "inv-2"})
    async with client.get("/sandbox/_control/requests?limit=1") as response:
        [last] = (await response.json())["requests"]
    assert last["body"] == {"checkoutToken": "inv-2"}
    assert last["headers"]["x-api-key"] == "sandbox-key"

    await client.post("/sandbox/_control/reset")
    counts = await stats(client)
    assert (counts["sessions"], counts["calls"], counts["call_times"]) == (0, 0, [])
    assert (await post(client, checkout_body(duration=60), key="k1"))[0] == 201


async def test_an_unknown_session_is_404(client: Client) -> None:
    async with client.get(f"{CHECKOUT}/cs_nope", headers=HEADERS) as response:
        assert response.status == 404
        assert (await response.json())["type"] == "notFound"


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--error-rate", "0.5", "--seed", "3"])
    assert options_from(args) == SandboxOptions(error_rate=0.5, seed=3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--throttle-rate", "1.5"])


async def listing(client: Client, **query: str) -> tuple[int, dict[str, Any]]:
    async with client.get(CHECKOUT, params=query, headers=HEADERS) as response:
        return response.status, await response.json()


async def test_the_list_filters_sorts_and_pages_as_the_reference_says(client: Client) -> None:
    for i in range(5):
        await post(client, checkout_body(checkoutToken=f"inv-{i}"))
    await post(client, checkout_body(checkoutToken="other", owner={"identityId": "idn_2"}))
    today = datetime.now(UTC).strftime("%d/%m/%Y")

    status, page = await listing(
        client, identityId="idn_1", startDate=today, endDate=today, sort="createdAt:desc", limit="2"
    )
    assert status == 200
    assert page["pagination"] == {"count": 2, "next": 2, "previous": None, "total": 5}
    assert [s["checkoutToken"] for s in page["results"]] == ["inv-4", "inv-3"]
    _, last = await listing(
        client, identityId="idn_1", sort="createdAt:desc", limit="2", offset="4"
    )
    assert last["pagination"] == {"count": 1, "next": None, "previous": 2, "total": 5}
    assert [s["checkoutToken"] for s in last["results"]] == ["inv-0"]

    _, by_account = await listing(client, accountNumber="123", status="ACTIVE", limit="100")
    assert by_account["pagination"]["total"] == 6
    _, none = await listing(client, accountNumber="999")
    assert none == {
        "pagination": {"count": 0, "next": None, "previous": None, "total": 0},
        "results": [],
    }
    # Creation dates are whole days: yesterday's list holds nothing made today.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%d/%m/%Y")
    _, before = await listing(client, startDate=yesterday, endDate=yesterday)
    assert before["pagination"]["total"] == 0
    assert (await stats(client))["lists"] == 5


@pytest.mark.parametrize(
    "query", [{"startDate": "2026-01-01"}, {"sort": "createdAt"}, {"limit": "0"}, {"offset": "x"}]
)
async def test_a_bad_list_query_is_refused_in_the_documented_shape(
    client: Client, query: dict[str, str]
) -> None:
    status, answer = await listing(client, **query)
    assert status == 400
    assert (answer["status"], answer["code"], answer["type"]) == (400, "11", "invalidParam")


async def test_a_deleted_session_is_invalidated(client: Client) -> None:
    _, session = await post(client, checkout_body())
    async with client.delete(f"{CHECKOUT}/{session['id']}", headers=HEADERS) as response:
        assert response.status == 200
    async with client.get(f"{CHECKOUT}/{session['id']}", headers=HEADERS) as response:
        assert (await response.json())["status"] == "EXPIRED"
    async with client.delete(f"{CHECKOUT}/cs_nope", headers=HEADERS) as response:
        assert response.status == 404


async def test_by_default_a_repeated_request_creates_another_session(client: Client) -> None:
    # The reference documents no Idempotency-Key: the sandbox ignores it unless told.
    first = await post(client, checkout_body(), key="k1")
    again = await post(client, checkout_body(), key="k1")
    assert first[1]["id"] != again[1]["id"]
    counts = await stats(client)
    assert counts["sessions_per_token"] == {"inv-1": [first[1]["id"], again[1]["id"]]}


async def test_a_repeated_token_can_be_answered_409_already_exist(
    client: Client, options: SandboxOptions
) -> None:
    options.conflict_on_repeated_token = True
    assert (await post(client, checkout_body(), key="k1"))[0] == 201
    status, answer = await post(client, checkout_body(), key="k1")
    assert status == 409
    assert (answer["code"], answer["type"]) == ("13", "alreadyExist")
    assert (await stats(client))["sessions"] == 1


async def test_a_dropped_answer_leaves_its_session_stored(
    client: Client, options: SandboxOptions
) -> None:
    options.drop_rate = 1
    with pytest.raises(aiohttp.ClientError):
        await post(client, checkout_body())
    counts = await stats(client)
    assert (counts["sessions"], counts["dropped"]) == (1, 1)
    assert list(counts["sessions_per_token"]) == ["inv-1"]


async def test_aiohttps_own_errors_are_in_the_documented_shape(client: Client) -> None:
    async with client.get("/sandbox/nowhere") as response:
        assert response.status == 404
        assert (await response.json())["type"] == "notFound"
    async with client.put(CHECKOUT) as response:
        assert response.status == 405
        assert (await response.json())["code"] == "42"
