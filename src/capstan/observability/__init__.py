"""Logs, metrics and the request context that ties them together."""
