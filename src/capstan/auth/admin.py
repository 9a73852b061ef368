"""The admin scope: operator endpoints and task types need an API key created with --admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from capstan.api.deps import PrincipalDep
from capstan.auth.service import Principal
from capstan.errors import Forbidden

ADMIN_ONLY = "needs an admin API key (`capstan keys create --admin`); sessions carry no scope"


async def get_admin(who: PrincipalDep) -> Principal:
    """The caller, if its API key has the admin scope; 403 otherwise."""
    if not who.admin:
        raise Forbidden(f"this {ADMIN_ONLY}")
    return who


AdminDep = Annotated[Principal, Depends(get_admin)]
