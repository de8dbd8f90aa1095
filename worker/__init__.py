"""The arq worker that turns queued checkout requests into Conomy checkout sessions."""

# The one place the version is written (pyproject.toml reads it): looking it up in the
# installed metadata took a twentieth of every command's start-up.
__version__ = "0.1.0"
