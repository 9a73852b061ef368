"""Text embeddings: one port (`Embedder`), an offline default that ships its weights in an
installed package, and an adapter for any OpenAI-compatible `/v1/embeddings` endpoint; plus the
sentence-aligned chunker that cuts documents into the pieces that get embedded.
See docs/embeddings.md."""
