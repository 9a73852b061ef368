"""Several cluster nodes in one URL setting (CAPSTAN_BROKER_URL, CAPSTAN_SEARCH_URL).

Either full URLs separated by commas, or one URL whose host part lists the nodes:

    amqp://user:pass@rabbit-1:5672/vhost,amqp://user:pass@rabbit-2:5672/vhost
    amqp://user:pass@rabbit-1:5672,rabbit-2:5672,rabbit-3:5672/vhost

Both mean the same nodes (capstan.broker.rabbitmq tries them in turn, the Elasticsearch client
spreads requests over them). A password containing a comma must be percent-encoded (%2C), as
any URL reserved character. The gateway reads broker URLs the same way
(gateway/src/realtime/nodes.ts).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def node_urls(url: str) -> list[str]:
    """One URL per node, in the order given; ValueError for an empty node."""
    nodes: list[str] = []
    for part in url.split(","):
        part = part.strip()
        if "://" in part or not nodes:
            nodes.append(part)
        else:
            # A bare host:port after a full URL: a continuation of its host list.
            nodes[-1] += "," + part
    expanded: list[str] = []
    for node in nodes:
        expanded.extend(_expand_hosts(node))
    if any(not urlsplit(n).hostname for n in expanded):
        raise ValueError(f"a node has no host: {url.split('@')[-1]}")
    return expanded


def _expand_hosts(url: str) -> list[str]:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    return [
        urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}"))
        for host in hosts.split(",")
        if host
    ] or [url]
