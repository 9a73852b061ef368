"""Cache, sessions and rate limits: Redis in production, process memory when embedded."""
