"""Settings the worker needs: the Conomy credentials and the worker's own knobs."""

from typing import Self

from pydantic import (
    AnyHttpUrl,
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

SANDBOX_BASE_URL = "https://api.conomyhq.com/sandbox"


class ConomyConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONOMY_", extra="ignore")

    base_url: AnyHttpUrl = AnyHttpUrl(SANDBOX_BASE_URL)
    api_key: SecretStr
    api_version: str = "24-04-2025"
    # Either a static bearer token, or a token endpoint and the client credentials for it.
    access_token: SecretStr | None = None
    auth_url: AnyHttpUrl | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    # What the reference leaves unnamed: the header an API reads an idempotency key from,
    # and the field of the url a payer is sent to after a failed payment.
    idempotency_header: str = "Idempotency-Key"
    failure_url_field: str = "failureUrl"

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        endpoint = (self.auth_url, self.client_id, self.client_secret)
        if self.access_token is None and None in endpoint:
            raise ValueError(
                "set CONOMY_ACCESS_TOKEN, or all of CONOMY_AUTH_URL, CONOMY_CLIENT_ID and "
                "CONOMY_CLIENT_SECRET"
            )
        return self

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
    retry_cap: PositiveFloat = 120
    shutdown_grace: PositiveInt = 25
    # One limit for the whole fleet, per API credential (calls per second; 0 = none).
    rate_limit: NonNegativeFloat = 0
    rate_burst: PositiveInt = 1
    # How late after its slot a call may reach the API and still keep to the limit.
    rate_jitter: NonNegativeFloat = 0.05
    max_in_flight: NonNegativeInt = 0
    rate_adaptive: bool = False
    # A job waits this long for its slot at most; past it, arq brings the job back later.
    rate_max_wait: PositiveFloat = 20
    # Signs the POST to a batch's webhook (enqueue --webhook), HMAC-SHA256.
    webhook_secret: SecretStr | None = None
    log_level: str = "INFO"


def describe(error: ValidationError) -> str:
    """One line naming the environment variables that are missing or malformed."""
    prefix = "CONOMY_" if error.title == ConomyConfig.__name__ else "PAYLINKS_"
    parts = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:
            parts.append(message)
            continue
        field = str(e["loc"][0])
        name = field if field.isupper() else prefix + field.upper()
        parts.append(f"{name}: {message}")
    return "; ".join(parts)
