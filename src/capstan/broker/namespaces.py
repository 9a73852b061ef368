"""Removing a broker namespace from RabbitMQ: every queue and exchange named `<namespace>.…`.

A namespace is one Capstan deployment's slice of a shared RabbitMQ (CAPSTAN_BROKER_NAMESPACE).
Its durable queues outlive the processes that declared them, so a retired deployment, a
benchmark or a test run must remove them: a node left holding thousands of queues boots slowly
and needs a file handle per queue. The names come from the management API (all of them,
including retry tiers and the gateway's queues) plus any the caller knows; deletion is over AMQP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import httpx

from capstan.broker.management import management_client, management_url
from capstan.node_urls import node_urls


@dataclass
class Names:
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return self.queues + self.exchanges


async def list_namespace(amqp_url: str, namespace: str, mgmt_url: str = "") -> Names:
    """Queues and exchanges named `<namespace>.…` in the AMQP URL's vhost (management API)."""
    path = urlsplit(node_urls(amqp_url)[0]).path
    vhost = quote(unquote(path.lstrip("/")) or "/", safe="")
    found = Names()
    async with management_client(management_url(amqp_url, mgmt_url), timeout=10) as api:
        for kind, names in (("queues", found.queues), ("exchanges", found.exchanges)):
            response = await api.get(f"/api/{kind}/{vhost}", params={"columns": "name"})
            response.raise_for_status()
            names += [x["name"] for x in response.json() if x["name"].startswith(namespace + ".")]
    return found


async def delete_names(amqp_url: str, names: Names) -> list[str]:
    """Delete these queues (with their messages) and exchanges; the names that failed."""
    import aio_pika

    failed: list[str] = []
    # Any one node of a cluster will do: queues and exchanges are cluster-wide.
    connection = await aio_pika.connect(node_urls(amqp_url)[0], timeout=10)
    async with connection:
        channel = await connection.channel()
        # A queue and an exchange may share a name (Celery's), hence the kind with each.
        for name, is_queue in [(q, True) for q in names.queues] + [
            (e, False) for e in names.exchanges
        ]:
            try:
                if is_queue:
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except Exception:
                failed.append(name)
                channel = await connection.channel()  # an error closes the channel
        with contextlib.suppress(Exception):
            await channel.close()
    return failed


async def remove_namespace(
    amqp_url: str, namespace: str, *, known: Names | None = None, mgmt_url: str = ""
) -> list[str]:
    """Delete every queue and exchange of the namespace; the names still there afterwards.

    `known` names are deleted even when the management API does not answer (then the result
    only lists those that failed)."""
    if not namespace or not namespace.strip("."):
        raise ValueError("an empty namespace would match every name")
    names = Names(list(known.queues), list(known.exchanges)) if known else Names()
    listed: Names | None
    try:
        listed = await list_namespace(amqp_url, namespace, mgmt_url)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        listed = None
    if listed is not None:
        names.queues += [q for q in listed.queues if q not in names.queues]
        names.exchanges += [e for e in listed.exchanges if e not in names.exchanges]
    failed = await delete_names(amqp_url, names)
    if listed is None:
        return failed
    try:
        return (await list_namespace(amqp_url, namespace, mgmt_url)).all()
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return failed
