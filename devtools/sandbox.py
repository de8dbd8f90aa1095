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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, ValidationError

from paylinks.devtools import contract
from paylinks.devtools.sandbox_options import SandboxOptions

API_VERSION = "24-04-2025"
_KEPT_REQUESTS = 1000


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


class _ApiError(Exception):
    """An error answer, sent as `{"error": {"code", "message"}}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "message": self.message}}
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
    return response


def _checkout(
    request: web.Request, text: str, sandbox: _Sandbox, records: _Records
) -> web.Response:
    # Synchronous on purpose: with no await between looking up an Idempotency-Key and storing
    # its session, concurrent calls with one key cannot both create a session.
    _check_headers(request, sandbox)
    if request.content_type != "application/json":
        raise _ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    body = _json_object(text)
    try:
        contract.check_checkout(body)
    except contract.RefusalError as refusal:
        return web.json_response(
            contract.error_body(400, refusal.code, refusal.type, refusal.detail), status=400
        )
    options = sandbox.options
    if options.reject_prefix and str(body.get("checkoutToken")).startswith(options.reject_prefix):
        message = (
            f"owner.identityId {body['owner']['identityId']!r} is not an identity of this account"
        )
        raise _ApiError(400, "invalid_request", message)
    if sandbox.chance(options.error_rate):
        raise _ApiError(500, "internal_error", "injected fault (error_rate)")
    if sandbox.chance(options.throttle_rate):
        retry_after = {"Retry-After": str(options.retry_after)}
        raise _ApiError(429, "rate_limited", "injected fault (throttle_rate)", retry_after)
    key = request.headers.get("Idempotency-Key")
    if key and key in records.replays:
        first_body, session_id = records.replays[key]
        if first_body != body:
            message = f"Idempotency-Key {key!r} was first sent with another body"
            raise _ApiError(409, "idempotency_conflict", message)
        return web.json_response(records.sessions[session_id], status=201)
    session = _session(body, request)
    records.sessions[session["id"]] = session
    if key:
        records.replays[key] = (body, session["id"])
    return web.json_response(session, status=201)


def _check_headers(request: web.Request, sandbox: _Sandbox) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _ApiError(401, "unauthorized", "Authorization header must be 'Bearer <access token>'")
    if not sandbox.accepts(token):
        raise _ApiError(401, "unauthorized", "the bearer token is unknown or expired")
    if request.headers.get("x-api-key") != sandbox.options.api_key:
        raise _ApiError(403, "forbidden", "x-api-key header is missing or wrong")
    version = request.headers.get("conomyhq-api-version")
    if version != API_VERSION:
        message = f"conomyhq-api-version header must be {API_VERSION}, got {version!r}"
        raise _ApiError(400, "unsupported_api_version", message)


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
        raise _ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


async def _get_session(request: web.Request) -> web.Response:
    sandbox = request.app[_SANDBOX]
    _check_headers(request, sandbox)
    session_id = request.match_info["id"]
    if session_id not in sandbox.records.sessions:
        raise _ApiError(404, "not_found", f"no checkout session {session_id!r}")
    return web.json_response(sandbox.records.sessions[session_id])


async def _issue_token(request: web.Request) -> web.Response:
    """POST /auth as the reference documents it: the API key, then the client's credentials."""
    sandbox = request.app[_SANDBOX]
    options = sandbox.options
    if request.headers.get("x-api-key") != options.api_key:
        return _auth_refusal(403, "43", "forbiddenOperation", "x-api-key is missing or wrong")
    try:
        credentials = json.loads(await request.text())
    except ValueError:
        credentials = None
    if not isinstance(credentials, dict):
        return _auth_refusal(400, "14", "parsingResource", "the body is not a JSON object")
    for name in ("clientId", "clientSecret"):
        if not isinstance(credentials.get(name), str):
            return _auth_refusal(400, *contract.MISSING, f"{name} is required")
    if (credentials["clientId"], credentials["clientSecret"]) != (
        options.client_id,
        options.client_secret,
    ):
        return _auth_refusal(401, "41", "unauthorized", "clientId or clientSecret is wrong")
    token = f"sbx_{secrets.token_urlsafe(24)}"
    sandbox.tokens[token] = time.monotonic() + options.token_ttl
    sandbox.records.tokens_issued += 1
    return web.json_response(
        {"accessToken": token, "tokenType": "Bearer", "expiresIn": options.token_ttl}
    )


def _auth_refusal(status: int, code: str, type: str, detail: str) -> web.Response:
    return web.json_response(contract.error_body(status, code, type, detail), status=status)


async def _stats(request: web.Request) -> web.Response:
    records = request.app[_SANDBOX].records
    per_token = Counter(session["checkoutToken"] for session in records.sessions.values())
    return web.json_response(
        {
            "sessions": len(records.sessions),
            "calls": len(records.call_times),
            "by_status": records.by_status,
            "tokens_issued": records.tokens_issued,
            "duplicate_tokens": sum(1 for count in per_token.values() if count > 1),
            "call_times": records.call_times,
        }
    )


async def _set_faults(request: web.Request) -> web.Response:
    options = request.app[_SANDBOX].options
    try:
        faults = _Faults.model_validate(_json_object(await request.text()))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise _ApiError(400, "invalid_request", problems) from None
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
        raise _ApiError(400, "invalid_request", "limit must be an integer") from None
    return web.json_response({"requests": kept[max(len(kept) - limit, 0) :]})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as error:
        return error.response()


def build_app(options: SandboxOptions) -> web.Application:
    """The sandbox; it reads `options` live, so changing them alters its behaviour at once."""
    app = web.Application(middlewares=[_json_errors])
    app[_SANDBOX] = _Sandbox(options, random.Random(options.seed))
    app.add_routes(
        [
            web.post("/sandbox/checkout-sessions", _create_session),
            web.get("/sandbox/checkout-sessions/{id}", _get_session),
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
