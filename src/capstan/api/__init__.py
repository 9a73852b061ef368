"""The Python API (:8000): REST /v1, OpenAPI at /docs, health and metrics."""
