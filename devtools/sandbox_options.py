"""The sandbox's knobs, as options and as command-line flags, apart from the server so that
the CLI starts without importing aiohttp."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass
class SandboxOptions:
    """Credentials the sandbox accepts and how often it misbehaves; read afresh on every call."""

    access_token: str = "sandbox-token"
    api_key: str = "sandbox-key"
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_ttl: int = 3600
    latency_ms: float = 0
    error_rate: float = 0
    throttle_rate: float = 0
    retry_after: int = 1
    slow_rate: float = 0
    slow_ms: float = 30000
    # checkoutTokens starting with this are refused with a 400, as the real API refuses a
    # request that is well formed but that it will not accept (an unknown owner, say).
    reject_prefix: str = ""
    # The fraction of sessions stored whose answer is then dropped (the connection cut).
    drop_rate: float = 0
    # Replay the first answer to a repeated Idempotency-Key. Off, as the reference documents
    # no such header: a repeated request creates another session.
    honour_idempotency_key: bool = False
    # Answer 409 alreadyExist to a second create of one checkoutToken.
    conflict_on_repeated_token: bool = False
    seed: int | None = None


def _rate(text: str) -> float:
    rate = float(text)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SandboxOptions()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8080, help="port to listen on, 0 for any free one")
    add("--latency-ms", type=float, default=d.latency_ms, help="delay before every checkout answer")
    add("--error-rate", type=_rate, default=d.error_rate, help="fraction of checkouts answered 500")
    add("--throttle-rate", type=_rate, default=d.throttle_rate, help="fraction answered 429")
    add("--retry-after", type=int, default=d.retry_after, help="Retry-After seconds on a 429")
    add("--slow-rate", type=_rate, default=d.slow_rate, help="fraction of 201s held back")
    add("--slow-ms", type=float, default=d.slow_ms, help="how long a slow answer is held back")
    add("--access-token", default=d.access_token, help="static bearer token accepted")
    add("--api-key", default=d.api_key, help="x-api-key accepted")
    add("--client-id", default=d.client_id, help="client id the token endpoint accepts")
    add("--client-secret", default=d.client_secret, help="client secret the token endpoint accepts")
    add("--token-ttl", type=int, default=d.token_ttl, help="lifetime in seconds of issued tokens")
    add("--drop-rate", type=_rate, default=d.drop_rate, help="fraction of 201s never answered")
    add(
        "--honour-idempotency-key",
        action="store_true",
        help="replay the first answer to a repeated Idempotency-Key (undocumented by Conomy)",
    )
    add(
        "--conflict-on-repeated-token",
        action="store_true",
        help="answer 409 alreadyExist to a second create of one checkoutToken",
    )
    add("--reject-prefix", default=d.reject_prefix, help="refuse checkoutTokens with this prefix")
    add("--seed", type=int, default=d.seed, help="seed for the fault draws, for repeatable runs")


def options_from(args: argparse.Namespace) -> SandboxOptions:
    names = {f.name for f in fields(SandboxOptions)}
    return SandboxOptions(**{name: value for name, value in vars(args).items() if name in names})
