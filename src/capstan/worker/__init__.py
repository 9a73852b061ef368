"""The worker role (seed: Worker Service): consumes task queues, runs handlers, stores results.
Invariants are in `capstan/tasks/__init__.py`."""
