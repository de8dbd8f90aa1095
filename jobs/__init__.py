"""The contract producers use: checkout request models, idempotency keys and the Redis layout."""
