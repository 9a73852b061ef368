"""`capstan keys ...` and the lifecycle half of `capstan tenants ...` (auth/lifecycle.py).

In production these reach every API instance through the revocation table; in embedded mode
a running `capstan dev` applies them within CAPSTAN_AUTH_REVOCATION_POLL_SECONDS too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.auth.lifecycle import KeyView, Lifecycle, TenantView
from capstan.container import Container
from capstan.db.unit import UnitOfWork, unit_of_work
from capstan.errors import CapstanError
from capstan.tasks.cli import _with_container

T = TypeVar("T")

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def _write(work: Callable[[Lifecycle, UnitOfWork], Awaitable[T]]) -> T:
    """Run `work` as the command's unit of work."""

    async def go(c: Container) -> T:
        async with unit_of_work(c.db) as uow:
            return await work(c.lifecycle, uow)

    return _run(go)


def _read(work: Callable[[Lifecycle, AsyncSession], Awaitable[T]]) -> T:
    async def go(c: Container) -> T:
        async with c.db() as session:
            return await work(c.lifecycle, session)

    return _run(go)


def _run(go: Callable[[Container], Awaitable[T]]) -> T:
    try:
        result: T = asyncio.run(_with_container(go))
    except CapstanError as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    return result


def _key_json(k: KeyView, plaintext: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": k.id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "admin": k.admin,
        "status": k.status,
        "created_at": k.created_at.isoformat(),
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
    }
    if plaintext is not None:
        data["api_key"] = plaintext
    return data


def _tenant_json(t: TenantView) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "status": "disabled" if t.disabled_at else "active",
        "created_at": t.created_at.isoformat(),
        "disabled_at": t.disabled_at.isoformat() if t.disabled_at else None,
    }


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:  # one tab-separated line each, for scripts
        typer.echo("\t".join("" if row[c] is None else str(row[c]) for c in columns))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name or id.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    admin: Annotated[bool, typer.Option("--admin", help="The operator scope.")] = False,
    expires_in_days: Annotated[float | None, typer.Option(min=0.0001)] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key and print it (shown once, stored hashed)."""
    expires = None
    if expires_in_days is not None:
        expires = datetime.now(UTC) + timedelta(days=expires_in_days)
    new = _write(
        lambda life, uow: life.create_key(uow, tenant, name, admin=admin, expires_at=expires)
    )
    if as_json:
        typer.echo(json.dumps(_key_json(new.key, new.plaintext)))
        return
    err.print(f"API key {new.key.id} for tenant {new.key.tenant_id} (shown once):")
    typer.echo(new.plaintext)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (name or id).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List API keys with their status (the keys themselves are never stored)."""
    keys = _read(lambda life, session: life.list_keys(session, tenant))
    columns = ["id", "tenant_id", "name", "admin", "status", "expires_at"]
    _print_rows([_key_json(k) for k in keys], as_json, columns)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (16 hex).")]) -> None:
    """Revoke a key: it and its sessions stop working on every instance."""
    key = _write(lambda life, uow: life.revoke_key(uow, key_id))
    err.print(f"revoked API key {key.id}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id (16 hex).")],
    overlap_seconds: Annotated[
        float, typer.Option(min=0, help="How long the old key keeps working.")
    ] = 3600.0,
    as_json: JsonOption = False,
) -> None:
    """Replace a key: print the new one; the old one stops after the overlap."""
    old, new = _write(lambda life, uow: life.rotate_key(uow, key_id, overlap_seconds))
    if as_json:
        typer.echo(json.dumps({"old": _key_json(old), "new": _key_json(new.key, new.plaintext)}))
        return
    ends = old.expires_at.isoformat() if old.expires_at else "now"
    err.print(f"API key {old.id} works until {ends}; its replacement {new.key.id} (shown once):")
    typer.echo(new.plaintext)


def register_tenant_commands(tenants_app: typer.Typer) -> None:
    """Add list, disable, enable and delete to `capstan tenants`."""

    @tenants_app.command("list")
    def tenants_list(as_json: JsonOption = False) -> None:
        """List tenants and whether they are active."""
        tenants = _read(lambda life, session: life.list_tenants(session))
        _print_rows([_tenant_json(t) for t in tenants], as_json, ["id", "name", "status"])

    @tenants_app.command("disable")
    def tenants_disable(tenant: Annotated[str, typer.Argument(help="Name or id.")]) -> None:
        """Stop every key and session of a tenant (its data stays)."""
        done = _write(lambda life, uow: life.disable_tenant(uow, tenant))
        err.print(f"disabled tenant {done.name} ({done.id})")

    @tenants_app.command("enable")
    def tenants_enable(tenant: Annotated[str, typer.Argument(help="Name or id.")]) -> None:
        """Let a disabled tenant's unrevoked keys work again."""
        done = _write(lambda life, uow: life.enable_tenant(uow, tenant))
        err.print(f"enabled tenant {done.name} ({done.id})")

    @tenants_app.command("delete")
    def tenants_delete(
        tenant: Annotated[str, typer.Argument(help="Name or id.")],
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Delete a tenant with all its data, keys and sessions. This cannot be undone."""
        if not yes and not typer.confirm(f"Delete tenant {tenant} and all its data?"):
            raise typer.Exit(1)
        counts = _write(lambda life, uow: life.delete_tenant(uow, tenant))
        err.print(
            f"deleted tenant {tenant}: {counts['documents']} document(s), {counts['keys']} key(s)"
        )
