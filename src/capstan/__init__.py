"""Capstan: a self-hosted backend for AI applications."""

__version__ = "0.1.0"
