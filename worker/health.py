"""How often each worker writes its health record: one setting, read by the workers (arq's
`health_check_interval`) and by the dashboard (to tell a record's age)."""

from pydantic import PositiveFloat
from pydantic_settings import BaseSettings, SettingsConfigDict


class HealthConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYLINKS_", extra="ignore")

    # Seconds between a worker's health records (`layout.worker_health_key`). Each lives a
    # second longer: a worker killed without stopping (SIGKILL, a crash) still shows that
    # long; one stopped by SIGTERM deletes its own. arq's default, 3600 s, would keep a
    # killed worker on the fleet page for an hour.
    health_check_interval: PositiveFloat = 10
