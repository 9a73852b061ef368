"""The ceiling of `capstan bench tasks`: what RabbitMQ itself does with messages of a Capstan task
message's size, through raw aio-pika (publish with confirms, consume, ack), on the same server."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from capstan_bench.tasks_report import rate
from capstan_bench.tasks_run import DONE_TIMEOUT_S, Run, cores


def task_message_body() -> bytes:
    """A Capstan task message body, as the relay publishes it (its size is the ceiling's)."""
    from capstan.events.envelope import encode
    from capstan.ids import uuid7

    return encode({"task_id": uuid7(), "priority": 0})


async def ceiling(run: Run, n: int, label: str) -> dict[str, Any]:
    """Raw aio-pika: publish n persistent messages with confirms (batches of 500 in flight, as
    the relay does), consume with prefetch = concurrency and ack each; first publish -> last ack."""
    import aio_pika

    task = run.progress.add_task(f"{label}: ceiling", total=n)
    queue_name = f"{run.namespace}.ceiling"
    body = b"x" * run.message_size
    pub_conn = await aio_pika.connect(run.amqp_url, timeout=5)
    con_conn = await aio_pika.connect(run.amqp_url, timeout=5)
    try:
        pub = await pub_conn.channel(publisher_confirms=True)
        con = await con_conn.channel()
        await con.set_qos(prefetch_count=run.opts.concurrency)
        queue = await con.declare_queue(queue_name, durable=True)
        await queue.purge()
        acked = 0
        all_acked = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal acked
            await message.ack()
            acked += 1
            if acked % 100 == 0:
                run.progress.update(task, completed=acked)
            if acked >= n:
                all_acked.set()

        tag = await queue.consume(on_message)
        cpu0 = run.cpu()
        t0 = time.time()
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    pub.default_exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=secrets.token_hex(16),
                        ),
                        routing_key=queue_name,
                    )
                    for _ in range(start, min(start + 500, n))
                )
            )
        published = time.time()
        await asyncio.wait_for(all_acked.wait(), DONE_TIMEOUT_S)
        wall = time.time() - t0
        cpu1 = run.cpu()
        await queue.cancel(tag)
    finally:
        await pub_conn.close()
        await con_conn.close()
    run.progress.update(task, visible=False)
    return {
        "tasks": n,
        "succeeded": n,
        "failed": 0,
        "submit_errors": 0,
        "submit_s": round(published - t0, 3),
        "wall_s": round(wall, 3),
        "per_s": rate(n, wall),
        "cpu_cores": cores(cpu0, cpu1),
    }
