"""A local stand-in for the Conomy checkout-sessions API, with fault knobs for tests and demos."""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, ValidationError

from paylinks.devtools import contract
from paylinks.devtools.sandbox_options import SandboxOptions
from paylinks.devtools.sandbox_sessions import BadQueryError, list_page

API_VERSION = "24-04-2025"
_KEPT_REQUESTS = 1000
# The loop's lateness past which the sandbox records a stall, checked every tick (seconds).
_STALL, _TICK = 0.02, 0.01


_Rate = Annotated[float, Field(ge=0, le=1)]


class _Faults(BaseModel):
    """The body of POST /sandbox/_control/faults; only the fields sent are applied."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: NonNegativeFloat = 0
    error_rate: _Rate = 0
    throttle_rate: _Rate = 0
    retry_after: NonNegativeInt = 0
    slow_rate: _Rate = 0
    slow_ms: NonNegativeFloat = 0
    reject_prefix: str = ""
    drop_rate: _Rate = 0
    honour_idempotency_key: bool = False
    conflict_on_repeated_token: bool = False


# The reference's error codes, by type.
_ERROR_CODES = {
    "serverError": "01",
    "unknown": "02",
    "invalidParam": "11",
    "missingParam": "12",
    "alreadyExist": "13",
    "parsingResource": "14",
    "failedPrecondition": "21",
    "notFound": "31",
    "tooManyRequests": "32",
    "unauthorized": "41",
    "unimplemented": "42",
    "forbiddenOperation": "43",
}
# The type of an error aiohttp raises itself (no route, wrong method).
_TYPES_BY_STATUS = {404: "notFound", 405: "unimplemented", 413: "invalidParam"}


class _ApiError(Exception):
    """An error answer, in the documented shape `{status, code, type, detail, traceId}`;
    `type` is one of the reference's (`_ERROR_CODES`)."""

    def __init__(
        self, status: int, type: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.type, self.detail, self.headers = status, type, detail, headers

    def response(self) -> web.Response:
        body = {
            "status": self.status,
            "code": _ERROR_CODES[self.type],
            "type": self.type,
            "detail": self.detail,
            "traceId": uuid.uuid4().hex,
        }
        return web.json_response(body, status=self.status, headers=self.headers)


@dataclass
class _Records:
    """What the sandbox has seen and made; a reset replaces it with a fresh one."""

    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Idempotency-Key -> (the body first sent with it, the session that body created)
    replays: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    call_times: list[float] = field(default_factory=list)
    by_status: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_KEPT_REQUESTS))
    # Answers dropped after their session was stored (the drop_rate knob), and list calls.
    dropped: int = 0
    lists: int = 0
    # (when, seconds): the sandbox's own stalls, in which calls wait unstamped and are then
    # stamped in a bunch; what tells a client that sent a bunch from a sandbox that stalled.
    stalls: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Sandbox:
    options: SandboxOptions
    rng: random.Random
    # Issued token -> monotonic expiry. Kept across resets so a running client keeps working.
    tokens: dict[str, float] = field(default_factory=dict)
    records: _Records = field(default_factory=_Records)

    def chance(self, rate: float) -> bool:
        return self.rng.random() < rate

    def accepts(self, token: str) -> bool:
        expiry = self.tokens.get(token, -math.inf)
        return token == self.options.access_token or expiry > time.monotonic()


_SANDBOX = web.AppKey("sandbox", _Sandbox)


async def _create_session(request: web.Request) -> web.Response:
    sandbox = request.app[_SANDBOX]
    # A call that outlives a reset writes to the records it started with, not the new ones.
    records = sandbox.records
    records.call_times.append(time.time())
    text = await request.text()
    records.requests.append({"headers": dict(request.headers), "body": _loads_or(text)})
    # Latency stands for the network round trip, so refused calls pay it too.
    await asyncio.sleep(sandbox.options.latency_ms / 1000)
    try:
        response = _checkout(request, text, sandbox, records)
    except _ApiError as error:
        response = error.response()
    records.by_status[str(response.status)] += 1
    # Replays are held back too: a slow provider is as slow for the client's retry.
    if response.status == 201 and sandbox.chance(sandbox.options.slow_rate):
        await asyncio.sleep(sandbox.options.slow_ms / 1000)
    if response.status == 201 and sandbox.chance(sandbox.options.drop_rate):
        _drop(request, records)
    return response


def _drop(request: web.Request, records: _Records) -> None:
    """The session is stored, but its answer never leaves: the connection is cut, so the
    client sees it reset (or times out), as when a provider fails after its commit."""
    records.dropped += 1
    assert request.transport is not None
    request.transport.abort()


def _checkout(
    request: web.Request, text: str, sandbox: _Sandbox, records: _Records
) -> web.Response:
    # Synchronous on purpose: with no await between looking up an Idempotency-Key and storing
    # its session, concurrent calls with one key cannot both create a session.
    _check_headers(request, sandbox)
    if request.content_type != "application/json":
        raise _ApiError(415, "invalidParam", "Content-Type must be application/json")
    body = _json_object(text)
    try:
        contract.check_checkout(body)
    except contract.RefusalError as refusal:
        raise _ApiError(400, refusal.type, refusal.detail) from None
    options = sandbox.options
    if options.reject_prefix and str(body.get("checkoutToken")).startswith(options.reject_prefix):
        message = (
            f"owner.identityId {body['owner']['identityId']!r} is not an identity of this account"
        )
        raise _ApiError(400, "invalidParam", message)
    if sandbox.chance(options.error_rate):
        raise _ApiError(500, "serverError", "injected fault (error_rate)")
    if sandbox.chance(options.throttle_rate):
        retry_after = {"Retry-After": str(options.retry_after)}
        raise _ApiError(429, "tooManyRequests", "injected fault (throttle_rate)", retry_after)
    key = request.headers.get("Idempotency-Key") if options.honour_idempotency_key else None
    if key and key in records.replays:
        return _replay(records, key, body)
    _refuse_a_repeated_token(str(body["checkoutToken"]), records, options)
    session = _session(body, request)
    records.sessions[session["id"]] = session
    if key:
        records.replays[key] = (body, session["id"])
    return web.json_response(session, status=201)


def _replay(records: _Records, key: str, body: dict[str, Any]) -> web.Response:
    """The first answer again, as an API honouring `Idempotency-Key` would give it (the
    `honour_idempotency_key` knob: the reference documents no such header)."""
    first_body, session_id = records.replays[key]
    if first_body != body:
        raise _ApiError(
            409, "alreadyExist", f"Idempotency-Key {key!r} was first sent with another body"
        )
    return web.json_response(records.sessions[session_id], status=201)


def _refuse_a_repeated_token(token: str, records: _Records, options: SandboxOptions) -> None:
    """409 alreadyExist to a second create of one checkoutToken (the
    `conflict_on_repeated_token` knob: the reference leaves this open)."""
    if options.conflict_on_repeated_token and any(
        s["checkoutToken"] == token for s in records.sessions.values()
    ):
        raise _ApiError(409, "alreadyExist", f"a checkout session for {token!r} already exists")


def _check_headers(request: web.Request, sandbox: _Sandbox) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _ApiError(401, "unauthorized", "Authorization header must be 'Bearer <access token>'")
    if not sandbox.accepts(token):
        raise _ApiError(401, "unauthorized", "the bearer token is unknown or expired")
    if request.headers.get("x-api-key") != sandbox.options.api_key:
        raise _ApiError(403, "forbiddenOperation", "x-api-key header is missing or wrong")
    version = request.headers.get("conomyhq-api-version")
    if version != API_VERSION:
        message = f"conomyhq-api-version header must be {API_VERSION}, got {version!r}"
        raise _ApiError(400, "invalidParam", message)


def _session(body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    session_id = f"cs_{uuid.uuid4().hex}"
    created = datetime.now(UTC)
    expires = created + timedelta(seconds=body["duration"])
    currency = body["currency"]
    return {
        "id": session_id,
        "paymentLinkId": f"pl_{uuid.uuid4().hex}",
        "checkoutToken": body.get("checkoutToken"),
        "paymentConfigs": [
            {
                "currency": currency,
                "product": "CHECKOUT",
                "exchangeRate": "1",
                "paymentMethods": body["paymentMethodsAllowed"],
            }
        ],
        "createdAt": _timestamp(created),
        "expiresAt": _timestamp(expires),
        "status": "ACTIVE",
        "items": body["items"],
        "currency": currency,
        "preTaxAmount": _sum([item["preTaxAmount"] for item in body["items"]], currency),
        "totalAmount": _sum([item["totalAmount"] for item in body["items"]], currency),
        "url": f"{request.scheme}://{request.host}/sandbox/pay/{session_id}",
        "paymentMethodsAllowed": body["paymentMethodsAllowed"],
        "customer": body.get("customer"),
        "redirectUrl": body.get("successUrl"),
        "destinations": body["destinations"],
        "customerRequirements": body.get("customerRequirements"),
        "owner": body["owner"],
    }


def _sum(amounts: list[str], currency: str) -> str:
    exponent = Decimal(1).scaleb(-contract.CURRENCY_DECIMALS[currency])
    return f"{sum(map(Decimal, amounts), Decimal(0)).quantize(exponent):f}"


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loads_or(text: str) -> Any:
    """The JSON `text` holds, or `text` itself when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_object(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        raise _ApiError(400, "parsingResource", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "parsingResource", "the body must be a JSON object")
    return body


async def _get_session(request: web.Request) -> web.Response:
    return web.json_response(_one_session(request))


async def _list_sessions(request: web.Request) -> web.Response:
    sandbox = request.app[_SANDBOX]
    _check_headers(request, sandbox)
    sandbox.records.lists += 1
    try:
        page = list_page(sandbox.records.sessions.values(), request.query)
    except BadQueryError as error:
        raise _ApiError(400, "invalidParam", str(error)) from None
    return web.json_response(page)


async def _delete_session(request: web.Request) -> web.Response:
    """Invalidates the session: its link stops working; it stays listed, EXPIRED."""
    session = _one_session(request)
    session["status"] = "EXPIRED"
    return web.json_response(session)


def _one_session(request: web.Request) -> dict[str, Any]:
    sandbox = request.app[_SANDBOX]
    _check_headers(request, sandbox)
    session_id = request.match_info["id"]
    if session_id not in sandbox.records.sessions:
        raise _ApiError(404, "notFound", f"no checkout session {session_id!r}")
    return sandbox.records.sessions[session_id]


async def _issue_token(request: web.Request) -> web.Response:
    """POST /auth as the reference documents it: the API key, then the client's credentials."""
    sandbox = request.app[_SANDBOX]
    options = sandbox.options
    if request.headers.get("x-api-key") != options.api_key:
        raise _ApiError(403, "forbiddenOperation", "x-api-key is missing or wrong")
    try:
        credentials = json.loads(await request.text())
    except ValueError:
        credentials = None
    if not isinstance(credentials, dict):
        raise _ApiError(400, "parsingResource", "the body is not a JSON object")
    for name in ("clientId", "clientSecret"):
        if not isinstance(credentials.get(name), str):
            raise _ApiError(400, "missingParam", f"{name} is required")
    if (credentials["clientId"], credentials["clientSecret"]) != (
        options.client_id,
        options.client_secret,
    ):
        raise _ApiError(401, "unauthorized", "clientId or clientSecret is wrong")
    token = f"sbx_{secrets.token_urlsafe(24)}"
    sandbox.tokens[token] = time.monotonic() + options.token_ttl
    sandbox.records.tokens_issued += 1
    return web.json_response(
        {"accessToken": token, "tokenType": "Bearer", "expiresIn": options.token_ttl}
    )


async def _stats(request: web.Request) -> web.Response:
    records = request.app[_SANDBOX].records
    per_token: dict[str, list[str]] = {}
    for session in records.sessions.values():
        per_token.setdefault(session["checkoutToken"], []).append(session["id"])
    return web.json_response(
        {
            "sessions": len(records.sessions),
            "calls": len(records.call_times),
            "by_status": records.by_status,
            "tokens_issued": records.tokens_issued,
            "duplicate_tokens": sum(1 for ids in per_token.values() if len(ids) > 1),
            # Every session's id by its checkoutToken, oldest first: one each, or duplicates.
            "sessions_per_token": per_token,
            "dropped": records.dropped,
            "lists": records.lists,
            "call_times": records.call_times,
            "stalls": records.stalls,
        }
    )


async def _set_faults(request: web.Request) -> web.Response:
    options = request.app[_SANDBOX].options
    try:
        faults = _Faults.model_validate(_json_object(await request.text()))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _ApiError(400, "invalidParam", problems) from None
    for name, value in faults.model_dump(exclude_unset=True).items():
        setattr(options, name, value)
    return web.json_response({name: getattr(options, name) for name in _Faults.model_fields})


async def _reset(request: web.Request) -> web.Response:
    request.app[_SANDBOX].records = _Records()
    return web.json_response({"reset": True})


async def _recent_requests(request: web.Request) -> web.Response:
    kept = list(request.app[_SANDBOX].records.requests)
    try:
        limit = int(request.query.get("limit", _KEPT_REQUESTS))
    except ValueError:
        raise _ApiError(400, "invalidParam", "limit must be an integer") from None
    return web.json_response({"requests": kept[max(len(kept) - limit, 0) :]})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as error:
        return error.response()
    except web.HTTPException as error:
        # aiohttp's own (no such route, wrong method): in the documented shape too.
        if error.status < 400:
            raise
        kind = _TYPES_BY_STATUS.get(error.status, "invalidParam")
        return _ApiError(error.status, kind, error.reason).response()


async def _watch_stalls(app: web.Application) -> AsyncIterator[None]:
    """Record each time the sandbox's loop runs late by more than `_STALL` (a starved CPU, a
    garbage collection): the call times it stamps then are late too."""
    sandbox = app[_SANDBOX]
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(_TICK)
            late = loop.time() - before - _TICK
            if late > _STALL:
                sandbox.records.stalls.append((time.time(), round(late, 3)))

    watching = asyncio.create_task(watch())
    yield
    watching.cancel()


def build_app(options: SandboxOptions) -> web.Application:
    """The sandbox; it reads `options` live, so changing them alters its behaviour at once."""
    app = web.Application(middlewares=[_json_errors])
    app[_SANDBOX] = _Sandbox(options, random.Random(options.seed))
    app.cleanup_ctx.append(_watch_stalls)
    app.add_routes(
        [
            web.post("/sandbox/checkout-sessions", _create_session),
            web.get("/sandbox/checkout-sessions", _list_sessions),
            web.get("/sandbox/checkout-sessions/{id}", _get_session),
            web.delete("/sandbox/checkout-sessions/{id}", _delete_session),
            web.post("/sandbox/auth", _issue_token),
            # Test controls, not part of the Conomy API: inspect what clients sent, set faults.
            web.get("/sandbox/_control/stats", _stats),
            web.post("/sandbox/_control/faults", _set_faults),
            web.post("/sandbox/_control/reset", _reset),
            web.get("/sandbox/_control/requests", _recent_requests),
        ]
    )
    return app


async def serve(host: str, port: int, options: SandboxOptions) -> None:
    """Serve the sandbox until cancelled."""
    # Held-back (slow) answers must not make a shutdown wait out slow_ms.
    runner = web.AppRunner(build_app(options), shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]  # differs from `port` when that is 0
        print(f"sandbox listening on http://{host}:{bound_port}/sandbox", file=sys.stderr)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
