"""Asynchronous tasks (seed: asynchronous task flow): API → outbox → RabbitMQ → worker →
result in the database → events.

Invariants:
- the task row is the truth; a broker message only tells a worker "look at task X". A worker
  claims a task by a conditional UPDATE (queued → running), so duplicate messages are harmless;
- the task row, its message and its `task.queued` event commit together (outbox), so a crash
  between "saved" and "queued" loses nothing;
- the result, the handler's declared effects and the `task.succeeded` event commit in one
  transaction that only applies if this worker still owns this attempt; the message is acked
  after that commit (at-least-once, one effect);
- retries are scheduled in the database (run_at with exponential backoff and jitter) and
  re-dispatched by the promoter; a worker whose heartbeat expires has its tasks re-queued by
  the reaper.
"""
