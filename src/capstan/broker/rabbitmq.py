"""RabbitMQ through aio-pika's robust connection (it reconnects on its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from capstan.broker.port import BrokerUnavailable

log = logging.getLogger(__name__)


class RabbitBroker:
    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        # A first connect that fails is retried in the background: the API starts anyway
        # and reports the broker as down in /readyz until it is reachable.
        self._connecting = asyncio.create_task(self._connect_forever())

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                self._connection = await aio_pika.connect_robust(self._url, timeout=self._timeout)
                return
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("rabbitmq unreachable, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def ping(self) -> None:
        conn = self._connection
        if conn is None or conn.is_closed or not conn.connected.is_set():
            raise BrokerUnavailable("rabbitmq is not connected")

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._connection is not None:
            await self._connection.close()
