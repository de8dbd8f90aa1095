"""paylinks tests: real Redis, the sandbox over HTTP, real worker processes."""
