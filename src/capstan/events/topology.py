"""Names on the broker. A namespace lets several deployments (or test runs) share one
RabbitMQ without seeing each other's events; docs/contracts/events.md lists the names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "capstan"

    @property
    def events_exchange(self) -> str:
        """Topic exchange every committed event is published to, by `<entity>.<action>`."""
        return f"{self.namespace}.events"

    @property
    def realtime_exchange(self) -> str:
        """Topic exchange of audited events with their feed `seq`, for the realtime gateway."""
        return f"{self.namespace}.realtime"

    @property
    def tasks_exchange(self) -> str:
        """Exchange of task messages; the routing key is the task queue's name."""
        return f"{self.namespace}.tasks"

    def subscriber_queue(self, subscriber: str) -> str:
        return f"{self.namespace}.sub.{subscriber}"

    def task_queue(self, queue: str) -> str:
        return f"{self.namespace}.tasks.{queue}"
