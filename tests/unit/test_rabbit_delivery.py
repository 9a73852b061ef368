"""A RabbitMQ delivery settled while its channel closes (a worker draining on shutdown): the
message goes back to the queue anyway, so nothing is raised (no "Consumer callback failed"
from aiormq) and nothing is published when the close is already known."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import aio_pika
import pytest

from capstan.broker.port import QueueSpec
from capstan.broker.rabbitmq import ATTEMPT_HEADER, RabbitBroker, _RabbitConsumer, _RabbitDelivery

SPEC = QueueSpec(name="capstan.test.q", patterns=("document.*",), retry_delays_ms=(200,))


class ClosingIncoming:
    """An incoming message whose channel started closing: acks raise like aio-pika's."""

    headers: ClassVar[dict[str, Any]] = {ATTEMPT_HEADER: 2}
    body = b"{}"
    message_id = "m-1"
    routing_key = "document.created"
    content_type = "application/json"
    priority = 0
    channel = None
    delivery_tag = 1

    async def ack(self, multiple: bool = False) -> None:
        raise aio_pika.exceptions.ChannelInvalidStateError("channel closed")


class OpenChannel:
    is_closed = False

    async def close(self) -> None:
        return None


class Published:
    def __init__(self) -> None:
        self.copies: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, queue: str, message: object, headers: dict[str, Any]) -> None:
        self.copies.append((queue, headers))


def _broker(monkeypatch: pytest.MonkeyPatch) -> tuple[RabbitBroker, Published]:
    broker = RabbitBroker("amqp://never-connected")
    published = Published()
    monkeypatch.setattr(broker, "_publish_to_queue", published)
    return broker, published


def _left_for_redelivery(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        "left for redelivery" in r.getMessage() and r.levelno == logging.DEBUG
        for r in caplog.records
    )


@pytest.mark.parametrize("settle", ["ack", "retry", "dead_letter"])
async def test_an_ack_refused_by_a_closing_channel_is_logged_at_debug_not_raised(
    settle: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="capstan.broker")
    broker, published = _broker(monkeypatch)
    delivery = _RabbitDelivery(broker, SPEC, ClosingIncoming())  # type: ignore[arg-type]
    if settle == "ack":
        await delivery.ack()
    elif settle == "retry":
        await delivery.retry(0, count_attempt=False)
    else:
        await delivery.dead_letter("no")
    assert _left_for_redelivery(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    if settle == "retry":
        # Published before the close was known: that copy stands (a tolerated duplicate),
        # with its attempt number kept.
        assert published.copies == [
            ("capstan.test.q.retry.200", {**ClosingIncoming.headers, ATTEMPT_HEADER: 2})
        ]


@pytest.mark.parametrize("settle", ["retry", "dead_letter"])
async def test_once_the_consumer_is_stopping_nothing_is_published(
    settle: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="capstan.broker")
    broker, published = _broker(monkeypatch)
    consumer = _RabbitConsumer(OpenChannel(), None)  # type: ignore[arg-type]
    await consumer.stop()
    delivery = _RabbitDelivery(broker, SPEC, ClosingIncoming(), consumer)  # type: ignore[arg-type]
    if settle == "retry":
        await delivery.retry(0, count_attempt=False)
    else:
        await delivery.dead_letter("no")
    assert published.copies == []
    assert _left_for_redelivery(caplog)
