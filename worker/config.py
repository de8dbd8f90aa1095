"""Settings the worker needs: the Conomy credentials and the worker's own knobs."""

import sys
from typing import Self, TypeVar

from pydantic import (
    AnyHttpUrl,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from paylinks.jobs.config import ProducerConfig

Config = TypeVar("Config", bound=BaseSettings)
EXIT_CONFIG = 2

SANDBOX_BASE_URL = "https://api.conomyhq.com/sandbox"


class ConomyConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONOMY_", extra="ignore")

    base_url: AnyHttpUrl = AnyHttpUrl(SANDBOX_BASE_URL)
    api_key: SecretStr
    api_version: str = "24-04-2025"
    # The client credentials a token is asked for with, at {base_url}/auth unless auth_url
    # says otherwise; or a static bearer token instead.
    client_id: str | None = None
    client_secret: SecretStr | None = None
    auth_url: AnyHttpUrl | None = None
    access_token: SecretStr | None = None
    # What the reference leaves unnamed: the header an API reads an idempotency key from.
    idempotency_header: str = "Idempotency-Key"

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        if self.access_token is None and None in (self.client_id, self.client_secret):
            raise ValueError(
                "set CONOMY_CLIENT_ID and CONOMY_CLIENT_SECRET (or a static CONOMY_ACCESS_TOKEN)"
            )
        return self

    @property
    def token_url(self) -> str:
        """Where tokens come from: the reference's {base}/auth, unless CONOMY_AUTH_URL is set."""
        if self.auth_url is not None:
            return str(self.auth_url)
        return f"{str(self.base_url).rstrip('/')}/auth"

    @property
    def checkout_sessions_url(self) -> str:
        return f"{str(self.base_url).rstrip('/')}/checkout-sessions"


class WorkerConfig(ProducerConfig):
    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    concurrency: PositiveInt = 50
    max_tries: PositiveInt = 8
    # A killed worker's job is taken up again job_timeout + 10 s after it started (arq).
    job_timeout: PositiveFloat = 50
    http_timeout: PositiveFloat = 15
    connect_timeout: PositiveFloat = 5
    retry_base: PositiveFloat = 1
    # The provider's going-live advice for 5xx: from 1 s, doubling, at most 32 s.
    retry_cap: PositiveFloat = 32
    shutdown_grace: PositiveInt = 25
    # One limit for the whole fleet, per API credential (calls per second; 0 = none).
    rate_limit: NonNegativeFloat = 0
    rate_burst: PositiveInt = 1
    # How late after its slot a call may reach the API and still keep to the limit.
    rate_jitter: NonNegativeFloat = 0.1
    max_in_flight: NonNegativeInt = 0
    rate_adaptive: bool = False
    # A job waits this long for its slot at most; past it, arq brings the job back later.
    rate_max_wait: PositiveFloat = 20
    # Before posting again after an answer that never came, or on a 409, look for the session
    # in the API's list. Off only for an API known to honour Idempotency-Key.
    reconcile: bool = True
    # The look-up waits this long past an unanswered call's timeout: a request still on its way
    # (queued in a proxy, or in a starved server) creates its session after a look-up that
    # came too soon found none, and the post that follows would make a second.
    reconcile_delay: NonNegativeFloat = 10
    # Signs the POST to a batch's webhook (enqueue --webhook), HMAC-SHA256.
    webhook_secret: SecretStr | None = None


class MetricsConfig(BaseSettings):
    """The worker's HTTP port: what the worker serves on, and what `paylinks health` asks."""

    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    # Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz); none when
    # unset. Each worker process on one host needs a port of its own.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    # Every interface, for a Prometheus on another host; figures carry no secret.
    metrics_host: str = "0.0.0.0"


def load(config: type[Config]) -> Config:
    """The configuration from the environment, or one clear line and exit code 2."""
    try:
        return config()
    except ValidationError as e:
        print(f"paylinks: configuration error: {describe(e)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def describe(error: ValidationError) -> str:
    """One line naming the environment variables that are missing or malformed."""
    prefix = "CONOMY_" if error.title == ConomyConfig.__name__ else "PAYLINKS_"
    parts = []
    for e in error.errors():
        message = "not set" if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        if not e["loc"]:
            parts.append(message)
            continue
        field = str(e["loc"][0])
        name = field if field.isupper() else prefix + field.upper()
        parts.append(f"{name}: {message}")
    return "; ".join(parts)


def settings_help(*models: type[BaseSettings]) -> str:
    """The environment variables these models read, for a command's --help."""
    lines = ["settings (environment variables):"]
    for model in models:
        prefix = model.model_config.get("env_prefix") or ""
        for name, field in model.model_fields.items():
            alias = field.validation_alias
            variable = alias if isinstance(alias, str) else (prefix + name).upper()
            if field.is_required():
                value = "required"
            elif field.default is None:
                value = "unset by default"
            elif isinstance(field.default, bool):
                value = f"default {str(field.default).lower()}"
            else:
                value = f"default {field.default}"
            lines.append(f"  {variable:<32} {value}")
    return "\n".join(lines)
