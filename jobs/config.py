"""Settings a producer needs, read from the environment."""

from typing import Literal

from pydantic import Field, PositiveInt, RedisDsn, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from paylinks.jobs.models import DEFAULT_DURATION, MIN_DURATION

THIRTY_DAYS = 30 * 24 * 3600


class LogConfig(BaseSettings):
    """What every command reads, even one that needs no Redis (the sandbox)."""

    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class IntakeConfig(LogConfig):
    """What validating requests reads: `paylinks schema` needs no Redis."""

    # Seconds a payment link lives when a request gives no `duration`; filled in at intake.
    default_duration: int = Field(DEFAULT_DURATION, ge=MIN_DURATION)


class ProducerConfig(IntakeConfig):
    # No default: a command run on the wrong host, or with the variable lost, would quietly
    # enqueue into (or report on) whatever Redis answers on 127.0.0.1:6379.
    redis_url: RedisDsn = Field(validation_alias="REDIS_URL")
    # How long a checkout's record, and so its protection against a second session, is kept.
    result_ttl: PositiveInt = THIRTY_DAYS
