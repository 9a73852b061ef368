"""Ephemeral signals (task progress) over Redis Pub/Sub, or in-process in embedded mode."""
