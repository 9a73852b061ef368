"""RabbitMQ definitions (exchanges, queues, bindings, users, vhosts, policies) through the
management API. Messages are not backed up: Capstan's events are in the outbox and audit log
and can be replayed (`capstan events replay`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from capstan.backups.progress import BackupError
from capstan.broker.management import management_client


async def export_definitions(url: str, out: Path) -> dict[str, Any]:
    async with management_client(url) as client:
        try:
            response = await client.get("/api/definitions")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackupError(f"rabbitmq management API: {exc}") from exc
    definitions = response.json()
    text = json.dumps(definitions, indent=1, sort_keys=True) + "\n"
    await asyncio.to_thread(out.write_text, text)
    return {
        "rabbitmq_version": definitions.get("rabbitmq_version"),
        **{
            kind: len(definitions.get(kind, []))
            for kind in ("vhosts", "users", "exchanges", "queues", "bindings", "policies")
        },
    }


async def import_definitions(url: str, path: Path) -> None:
    """POST /api/definitions: merges (creates what is missing, updates what differs)."""
    body = json.loads(await asyncio.to_thread(path.read_text))
    async with management_client(url) as client:
        try:
            response = await client.post("/api/definitions", json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackupError(f"rabbitmq management API: {exc}") from exc


def check_definitions(path: Path) -> list[str]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"rabbitmq definitions are unreadable: {exc}"]
    return [] if isinstance(body, dict) else ["rabbitmq definitions are not a JSON object"]
