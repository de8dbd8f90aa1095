"""Development tools apart from the runtime: the sandbox API, the demo and a private Redis."""
