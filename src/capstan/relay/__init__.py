"""The relay: moves committed outbox rows to the events exchange (seed: event-driven flow).

Invariants:
- a row is marked published only after the broker confirmed it; a crash in between means the
  event is published again (subscribers deduplicate by event id), never lost;
- batches are serialized by a PostgreSQL advisory lock, so several relays can run for
  availability while events leave in commit order (per-subject order is the order of commits,
  because writers of one subject hold its row lock until they commit);
- relays wake on LISTEN/NOTIFY (PostgreSQL: writers notify after their commit, never from
  the writing transaction; capstan.events.doorbell) or an in-process signal (embedded), and
  poll as a safety net.
"""
