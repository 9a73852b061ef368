"""The embedder that the settings ask for: the endpoint at CAPSTAN_EMBEDDINGS_URL when it is
set, else the offline model shipped with Capstan."""

from __future__ import annotations

import asyncio

from capstan.embeddings.port import Embedder
from capstan.settings import Settings


async def build_embedder(settings: Settings) -> Embedder:
    """Open the configured embedder (an endpoint without a configured dimension is probed)."""
    if settings.embeddings_url:
        from capstan.embeddings.openai_compat import OpenAICompatibleEmbedder

        return await OpenAICompatibleEmbedder.connect(
            settings.embeddings_url,
            settings.embeddings_model,
            dimension=settings.embeddings_dimension,
            version=settings.embeddings_version,
            api_key=settings.embeddings_api_key.get_secret_value(),
            timeout_seconds=settings.embeddings_timeout_seconds,
            max_attempts=settings.embeddings_max_attempts,
            retry_base_seconds=settings.embeddings_retry_base_seconds,
            batch_size=settings.embeddings_batch_size,
        )
    from capstan.embeddings.static import StaticEmbedder

    return await asyncio.to_thread(StaticEmbedder.load)
