"""The Celery side of `capstan bench tasks`: one Celery app, the same no-op task.

Celery is NOT a Capstan dependency; it is installed into the bench environment only
(`.venv/bin/pip install celery psycopg2-binary`). This is the only module that imports it.

The worker process runs `python -m celery -A capstan.bench.celery_side worker ...` and reads
its configuration from the environment (CAPSTAN_BENCH_CELERY_*), which the bench sets; the bench
process builds the same app with `make_app` to submit with `.delay`.

Configuration, chosen to match Capstan's guarantees (see bench/README.md):
- broker: the same RabbitMQ; one queue (and direct exchange) of the bench's own name;
- `task_acks_late=True`: acknowledged after the task ran (Capstan acks after the result commit);
- `broker_transport_options={"confirm_publish": True}`: `.delay` returns once RabbitMQ confirmed
  the message (a Capstan submit returns once the task row and its message are committed);
- result backend: the database backend (`db+postgresql+psycopg2://`) on the bench's scratch
  PostgreSQL database (tables `celery_taskmeta` / `celery_tasksetmeta`, created by Celery);
- `worker_prefetch_multiplier` from the environment (default 1: prefetch = concurrency, as
  Capstan's worker);
- no remote control, no task events, no gossip/mingle/heartbeat (the bench passes the flags):
  nothing on the broker besides the task queue.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # bench-only: installed on demand (see bench/README.md)

NOOP = "capstan_bench.noop"
STARTED = "capstan_bench.started"


def make_app(broker_url: str, backend_url: str, queue: str, prefetch_multiplier: int = 1) -> Any:
    app = Celery("capstan_bench", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=prefetch_multiplier,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=None,  # no periodic cleanup task
        worker_hijack_root_logger=False,
    )

    @app.task(name=NOOP)  # type: ignore[untyped-decorator,unused-ignore]
    def noop() -> None:
        return None

    @app.task(name=STARTED)  # type: ignore[untyped-decorator,unused-ignore]
    def started() -> float:
        """The no-op that says when it started (for the idle submit -> start latency)."""
        return time.time()

    return app


def create_tables(app: Any) -> None:
    """Create Celery's result tables before the worker's children race to do it."""
    session = app.backend.ResultSession()
    session.close()


def __getattr__(name: str) -> Any:
    """`celery -A capstan.bench.celery_side` reads `app`: built from the environment on first
    use only, so the bench process (which calls `make_app` itself) never has two apps
    registering the same task names."""
    if name != "app":
        raise AttributeError(name)
    return make_app(
        os.environ.get("CAPSTAN_BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        os.environ.get("CAPSTAN_BENCH_CELERY_BACKEND", "db+sqlite:///celery-bench.sqlite"),
        os.environ.get("CAPSTAN_BENCH_CELERY_QUEUE", "capstan_bench_celery"),
        int(os.environ.get("CAPSTAN_BENCH_CELERY_PREFETCH_MULTIPLIER", "1")),
    )
