"""/v1/documents: thin handlers over DocumentStore."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.db.unit import unit_of_work
from capstan.documents.schemas import DocumentCreate, DocumentPage, DocumentRead, DocumentUpdate
from capstan.documents.service import rendered, to_read
from capstan.errors import InvalidInput

router = APIRouter(prefix="/v1/documents", tags=["documents"])

JSON = "application/json"
VERSION_TAG = re.compile(r"[0-9]{1,18}")


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """`If-Match: "<version>"` (weak tags and `*` accepted) → the version, or None."""
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    # ASCII digits only: "²".isdigit() is true and int("²") raises.
    if not VERSION_TAG.fullmatch(tag):
        raise InvalidInput('If-Match must be an ETag this API returned, like "3"', field="If-Match")
    return int(tag)


def none_match(value: str | None, version: int) -> bool:
    """True when `If-None-Match` names `version` (or is `*`): answer 304 Not Modified.

    Weak comparison, as RFC 9110 section 13.1.2 requires for If-None-Match; a malformed tag
    matches nothing, so the full response is sent."""
    if value is None:
        return False
    current = etag(version)
    for tag in value.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == current:
            return True
    return False


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DocumentRead)
async def create_document(body: DocumentCreate, c: ContainerDep, who: PrincipalDep) -> Response:
    """Store a new document (version 1)."""
    doc = await c.documents.create_one(who.tenant_id, body)
    return Response(
        rendered(doc),
        status_code=201,
        media_type=JSON,
        headers={"ETag": etag(doc.version), "Location": f"/v1/documents/{doc.id}"},
    )


@router.get("/{doc_id}", response_model=DocumentRead)
async def get_document(
    doc_id: str,
    request: Request,
    c: ContainerDep,
    who: PrincipalDep,
    cache_control: Annotated[str | None, Header()] = None,
) -> Response:
    """Read one document through the cache; `Cache-Control: no-cache` reads the database."""
    # The app answers this GET with the lean route (capstan.documents.read_route), which keeps
    # this behaviour in fewer steps; this declaration is what OpenAPI describes, and what
    # `create_app(lean_document_read=False)` serves. `request` reads If-None-Match so that
    # the OpenAPI operation stays as it was.
    bypass = cache_control is not None and "no-cache" in cache_control.lower()
    view = await c.documents.read(who.tenant_id, doc_id, bypass_cache=bypass)
    headers = {"ETag": etag(view.version), "X-Cache": view.cache}
    if none_match(request.headers.get("if-none-match"), view.version):
        return Response(status_code=304, headers=headers)
    return Response(view.payload, media_type=JSON, headers=headers)


@router.patch("/{doc_id}", response_model=DocumentRead)
async def update_document(
    doc_id: str,
    body: DocumentUpdate,
    c: ContainerDep,
    who: PrincipalDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change some fields; with `If-Match`, only if the document is still at that version."""
    expected = parse_if_match(if_match)
    async with unit_of_work(c.db) as uow:
        doc = await c.documents.update(uow, who.tenant_id, doc_id, body, if_match=expected)
    return Response(rendered(doc), media_type=JSON, headers={"ETag": etag(doc.version)})


@router.delete("/{doc_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    doc_id: str,
    c: ContainerDep,
    who: PrincipalDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Delete a document."""
    expected = parse_if_match(if_match)
    async with unit_of_work(c.db) as uow:
        await c.documents.delete(uow, who.tenant_id, doc_id, if_match=expected)
    return Response(status_code=204)


@router.get("", response_model=DocumentPage)
async def list_documents(
    c: ContainerDep,
    who: PrincipalDep,
    collection: Annotated[str | None, Query(max_length=100)] = None,
    tag: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    """Documents in creation order, a page at a time (keyset pagination)."""
    rows, next_cursor = await c.documents.list(
        who.tenant_id, collection=collection, tag=tag, cursor=cursor, limit=limit
    )
    return DocumentPage(items=[to_read(d) for d in rows], next_cursor=next_cursor)
