"""Tenants own everything; each has API keys."""
