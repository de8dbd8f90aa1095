"""`paylinks check`: before a nightly run, everything a worker needs, tried once, creating
nothing: the settings, Redis, a token, and one page of the API's sessions."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from paylinks.jobs import layout
from paylinks.jobs.connection import address, check_reachable
from paylinks.worker.app import shutdown, startup
from paylinks.worker.auth import AuthError, credential_id
from paylinks.worker.config import ConomyConfig, WorkerConfig
from paylinks.worker.conomy import ApiAnswer
from paylinks.worker.ratelimit import RateLimited
from paylinks.worker.tasks import Deps

# A page as small as a look-up's first: enough to show the list can be read.
PAGE = {"sort": "createdAt:desc", "limit": "10"}


class CheckFailedError(Exception):
    """What is wrong, in one line."""


async def check(config: WorkerConfig, conomy: ConomyConfig) -> None:
    """Print a line for each thing found working; raise CheckFailedError at the first that
    is not (an unreachable Redis raises RedisUnreachableError)."""
    print("settings ok")
    check_reachable(config)
    print(f"redis at {address(config)} ok")
    ctx: dict[str, Any] = {"config": config, "conomy": conomy}
    await startup(ctx)
    try:
        deps: Deps = ctx["paylinks"]
        print(await _token(deps, conomy))
        print(await _sessions(deps))
    finally:
        await shutdown(ctx)


async def _token(deps: Deps, conomy: ConomyConfig) -> str:
    try:
        await deps.client.tokens.get()
    except AuthError as e:
        raise CheckFailedError(f"token: {e}") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CheckFailedError(f"token: {type(e).__name__}") from None
    # A fetched token is kept in Redis for the fleet; a static one has no known expiry.
    ttl_ms = await deps.redis.pttl(layout.access_token_key(credential_id(conomy)))
    return f"token ok (expires in {ttl_ms // 1000} s)" if ttl_ms > 0 else "token ok"


async def _sessions(deps: Deps) -> str:
    try:
        # A slot like every call, so a check during a run keeps to the fleet's limit.
        async with deps.limiter.slot(max_wait=deps.config.rate_max_wait):
            answer = await deps.client.list_checkout_sessions(PAGE)
    except RateLimited as e:
        raise CheckFailedError(
            f"listing sessions: no rate-limit slot for {e.retry_in:.0f} s"
        ) from None
    except AuthError as e:
        raise CheckFailedError(f"token: {e}") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        where = deps.client.address
        raise CheckFailedError(
            f"listing sessions: connection to {where}: {type(e).__name__}"
        ) from None
    return f"sessions listed: {_count(answer)}"


def _count(answer: ApiAnswer) -> str:
    if not answer.ok:
        error = answer.error()
        kind = f" {error.type} (code {error.code})" if error.type else ""
        raise CheckFailedError(f"listing sessions: HTTP {answer.status}{kind}: {error.message}")
    try:
        page = orjson.loads(answer.body)
        count, total = len(page["results"]), page.get("pagination", {}).get("total")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CheckFailedError("listing sessions: the answer is not a page of sessions") from None
    return f"{count}" if total is None else f"{count} (of {total})"
