"""The arq worker that turns queued checkout requests into Conomy checkout sessions."""
