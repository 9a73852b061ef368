"""Subscriber services: each its own durable queue on the events exchange (seed: Svc B..E).

Invariants:
- one effect per event per subscriber: the runtime records (subscriber, event id) in the same
  transaction as the subscriber's database effect, and effects outside the database (cache,
  search, HTTP) are idempotent by construction (versions, event ids);
- a message is acknowledged only after that transaction committed;
- transient failures retry with exponential backoff (broker retry tiers); after
  `event_max_attempts`, and at once for malformed messages, the event goes to the dead-letter
  queue `capstan.sub.<name>.dead` while the others keep flowing.
"""
