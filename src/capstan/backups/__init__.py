"""Backups of PostgreSQL or SQLite, Redis and RabbitMQ definitions (docs/backups.md)."""
