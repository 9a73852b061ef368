"""Relational store: schema, engine and migrations (PostgreSQL or SQLite, kept in lockstep)."""
