"""Full-text search: Elasticsearch in production, SQLite FTS5 when embedded."""
