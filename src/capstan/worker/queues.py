"""Task queue specs on the broker."""

from __future__ import annotations

from capstan.broker.port import QueueSpec
from capstan.events.topology import Topology

MAX_PRIORITY = 9


def task_queue_spec(topology: Topology, queue: str) -> QueueSpec:
    return QueueSpec(
        name=topology.task_queue(queue),
        patterns=(queue,),
        exchange=topology.tasks_exchange,
        retry_delays_ms=(200,),  # only used to hand a message back while draining
        max_priority=MAX_PRIORITY,
    )
