"""The Conomy client against the sandbox over HTTP: its headers and its authentication."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from pydantic import AnyHttpUrl, SecretStr, ValidationError
from redis.asyncio import Redis

from paylinks import __version__
from paylinks.jobs import layout
from paylinks.jobs.models import CheckoutRequest
from paylinks.worker.auth import StaticToken, TokenEndpoint, credential_id, renew_after
from paylinks.worker.config import ConomyConfig
from paylinks.worker.conomy import ConomyClient
from tests.helpers import ACCESS_TOKEN, API_KEY, CLIENT_ID, CLIENT_SECRET, EXAMPLES, Sandbox


def body() -> bytes:
    line = (EXAMPLES / "checkouts.jsonl").read_text().splitlines()[0]
    return orjson.dumps(CheckoutRequest.model_validate_json(line).wire())


def conomy(sandbox: Sandbox, **fields: object) -> ConomyConfig:
    return ConomyConfig(base_url=AnyHttpUrl(sandbox.base_url), api_key=SecretStr(API_KEY), **fields)


async def test_the_client_sends_exactly_the_references_headers(sandbox: Sandbox) -> None:
    config = conomy(sandbox, access_token=SecretStr(ACCESS_TOKEN))
    key = layout.idempotency_key("INV-1")
    async with aiohttp.ClientSession() as http:
        client = ConomyClient(config, http, StaticToken(ACCESS_TOKEN))
        answer = await client.create_checkout_session(body(), key)
    assert answer.status == 201, answer.body
    [request] = await sandbox.requests(limit=1)
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert headers["x-api-key"] == API_KEY
    assert headers["conomyhq-api-version"] == "24-04-2025"
    assert headers["user-agent"] == f"paylinks/{__version__}"
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == key
    assert request["body"] == orjson.loads(body())


@pytest.fixture
def endpoint_config(sandbox: Sandbox) -> ConomyConfig:
    # Only the credentials: the token endpoint is {base}/auth, as the reference documents.
    return conomy(sandbox, client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET))


async def test_the_fleet_shares_one_token_from_the_endpoint(
    redis: Redis, sandbox: Sandbox, endpoint_config: ConomyConfig
) -> None:
    async with aiohttp.ClientSession() as http:
        # Two processes' worth of clients: the second finds the first's token in Redis.
        for _ in range(2):
            tokens = TokenEndpoint(endpoint_config, redis, http)
            client = ConomyClient(endpoint_config, http, tokens)
            answer = await client.create_checkout_session(body(), layout.idempotency_key("A"))
            assert answer.status == 201
    assert (await sandbox.stats())["tokens_issued"] == 1
    cached = layout.access_token_key(credential_id(endpoint_config))
    assert 0 < await redis.pttl(cached) <= 3600 * 1000


async def test_a_rejected_token_is_renewed_once_and_the_call_sent_again(
    redis: Redis, sandbox: Sandbox, endpoint_config: ConomyConfig
) -> None:
    cached = layout.access_token_key(credential_id(endpoint_config))
    await redis.set(cached, "revoked-token", px=60_000)
    async with aiohttp.ClientSession() as http:
        client = ConomyClient(endpoint_config, http, TokenEndpoint(endpoint_config, redis, http))
        answer = await client.create_checkout_session(body(), layout.idempotency_key("B"))
    assert answer.status == 201
    assert (await sandbox.stats())["tokens_issued"] == 1
    assert await redis.get(cached) != "revoked-token"
    statuses = (await sandbox.stats())["by_status"]
    assert (statuses.get("401"), statuses.get("201")) == (1, 1)


async def test_a_static_token_that_is_rejected_is_not_retried(sandbox: Sandbox) -> None:
    config = conomy(sandbox, access_token=SecretStr("wrong-token"))
    async with aiohttp.ClientSession() as http:
        client = ConomyClient(config, http, StaticToken("wrong-token"))
        answer = await client.create_checkout_session(body(), layout.idempotency_key("C"))
    assert answer.status == 401
    assert (await sandbox.stats())["calls"] == 1


@pytest.mark.parametrize(
    ("lifetime", "renewed_after"), [(3600, 3240), (60, 54), (20, 15), (4, 2), (1, 0.5)]
)
def test_a_token_is_renewed_well_before_it_expires(lifetime: float, renewed_after: float) -> None:
    assert renew_after(lifetime) == renewed_after


def test_the_credentials_alone_name_the_token_endpoint(sandbox: Sandbox) -> None:
    config = conomy(sandbox, client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET))
    assert config.token_url == f"{sandbox.base_url}/auth"
    override = AnyHttpUrl("https://auth.example.com/token")
    assert conomy(sandbox, access_token=SecretStr("t"), auth_url=override).token_url == str(
        override
    )
    with pytest.raises(ValidationError, match="CONOMY_CLIENT_ID and CONOMY_CLIENT_SECRET"):
        conomy(sandbox, client_id=CLIENT_ID)
