"""Settings a producer needs, read from the environment."""

from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    FilePath,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    RedisDsn,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


class RedisConfig(BaseSettings):
    """Where Redis is and how to reach it: what `jobs.connection` turns into a client."""

    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    # No default: a command run on the wrong host, or with the variable lost, would quietly
    # enqueue into (or report on) whatever Redis answers on 127.0.0.1:6379. Its user and
    # password are the ACL user's; rediss:// is TLS. With sentinels, its host is not used.
    redis_url: RedisDsn = Field(validation_alias="REDIS_URL")
    # TLS (rediss://): the CA that signed the server's certificate, and the client's own
    # certificate and key for a server that asks for one (tls-auth-clients).
    redis_ca_file: FilePath | None = None
    redis_cert_file: FilePath | None = None
    redis_key_file: FilePath | None = None
    # Redis Sentinel: host:port of each sentinel, comma-separated; they name the primary.
    redis_sentinels: Annotated[list[tuple[str, int]] | None, NoDecode] = None
    redis_sentinel_master: str = "mymaster"
    # The sentinels' own password (their requirepass), when they have one.
    redis_sentinel_password: SecretStr | None = None
    # An enqueue is acknowledged once this many replicas hold it (WAIT), so that a failover
    # to one of them keeps it; 0 acknowledges what the primary alone holds.
    redis_min_replicas: NonNegativeInt = 0
    redis_replicas_timeout: PositiveFloat = 5

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _host_port_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        addresses = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{item!r} is not host:port")
            addresses.append((host.strip("[]"), int(port)))
        return addresses or None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        tls = self.redis_url.scheme == "rediss"
        if not tls and (self.redis_ca_file or self.redis_cert_file or self.redis_key_file):
            raise ValueError(
                "the PAYLINKS_REDIS_*_FILE settings are for TLS: REDIS_URL must be rediss://"
            )
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError(
                "set both PAYLINKS_REDIS_CERT_FILE and PAYLINKS_REDIS_KEY_FILE, or neither"
            )
        if self.redis_sentinels and self.redis_url.scheme == "unix":
            raise ValueError(
                "with PAYLINKS_REDIS_SENTINELS, REDIS_URL must be redis:// or rediss://"
            )
        return self


class ProducerConfig(IntakeConfig, RedisConfig):
    # How long a checkout's record, and so its protection against a second session, is kept.
    result_ttl: PositiveInt = THIRTY_DAYS
