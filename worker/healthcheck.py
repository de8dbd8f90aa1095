"""`paylinks health`: is this host's worker ready? Asked on its port, for Docker's HEALTHCHECK."""

from __future__ import annotations

import urllib.error
import urllib.request

from pydantic import ValidationError

from paylinks.worker.config import MetricsConfig, describe

# Seconds to wait for the worker's answer; its own probe of Redis takes at most 2.
TIMEOUT = 5.0
# Addresses that mean "every interface": the worker is asked on loopback.
_ANY = ("", "0.0.0.0", "::")


def unhealthy(path: str = "/readyz") -> str | None:
    """Why the worker serving PAYLINKS_METRICS_PORT on this host is not ready (or, with
    path /healthz, not alive); None when it is. One line."""
    try:
        config = MetricsConfig()
    except ValidationError as e:
        return f"configuration error: {describe(e)}"
    if config.metrics_port is None:
        return "PAYLINKS_METRICS_PORT is not set: the worker serves no health endpoint"
    host = "127.0.0.1" if config.metrics_host in _ANY else config.metrics_host
    where = f"{host}:{config.metrics_port}"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT):
            return None
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace").strip().splitlines()
        return text[0] if text else f"{where}{path} answered {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"no worker answers on {where} (PAYLINKS_METRICS_PORT): {reason}"
