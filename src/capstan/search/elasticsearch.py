"""Elasticsearch through the official async client."""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from capstan.search.port import SearchUnavailable


class ElasticsearchEngine:
    name = "elasticsearch"

    def __init__(self, url: str, *, timeout_seconds: float = 2.0) -> None:
        self.client = AsyncElasticsearch(url, request_timeout=timeout_seconds, max_retries=0)

    async def ping(self) -> None:
        try:
            health = await self.client.cluster.health()
        except (EsConnectionError, TransportError) as exc:
            raise SearchUnavailable(f"elasticsearch: {exc}") from exc
        if health["status"] == "red":
            raise SearchUnavailable("elasticsearch cluster is red")

    async def close(self) -> None:
        await self.client.close()
