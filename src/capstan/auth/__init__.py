"""Authentication: API keys (stored hashed), sessions, per-key rate limits."""
