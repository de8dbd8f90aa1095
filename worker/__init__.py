"""The arq worker that turns queued checkout requests into Conomy checkout sessions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("paylinks")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
