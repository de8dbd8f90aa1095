"""A web dashboard over the fleet's Redis: batches, requests, dead letters and the fleet."""
