"""paylinks: Conomy checkout sessions (payment links) in bulk, on an arq worker pool over Redis."""

from paylinks.jobs.models import CheckoutRequest
from paylinks.jobs.producer import Producer, SyncProducer

# The one place the version is written (pyproject.toml reads it): looking it up in the
# installed metadata took a twentieth of every command's start-up.
__version__ = "0.1.0"

__all__ = ["CheckoutRequest", "Producer", "SyncProducer", "__version__"]
