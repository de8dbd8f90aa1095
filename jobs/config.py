"""Settings a producer needs, read from the environment."""

from pydantic import Field, PositiveInt, RedisDsn
from pydantic_settings import BaseSettings, SettingsConfigDict

THIRTY_DAYS = 30 * 24 * 3600


class ProducerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    redis_url: RedisDsn = Field(RedisDsn("redis://127.0.0.1:6379/0"), validation_alias="REDIS_URL")
    # How long a checkout's record, and so its protection against a second session, is kept.
    result_ttl: PositiveInt = THIRTY_DAYS
