"""Request and response bodies for /v1/documents."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from capstan.storable import MAX_JSON_DEPTH, StorableInput

# Limits here are the defaults; Settings may lower them (checked in the service).
Collection = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
METADATA_RULES = (
    f"a JSON object nesting at most {MAX_JSON_DEPTH} levels; no string (key or value, here or "
    "in any field) may hold NUL or a lone UTF-16 surrogate; NaN and infinities are refused"
)


class DocumentCreate(StorableInput):
    model_config = ConfigDict(extra="forbid")

    collection: Collection = "default"
    title: str = Field("", max_length=1000)
    body: str = Field(..., max_length=500_000)
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict, description=METADATA_RULES)


class DocumentUpdate(StorableInput):
    """A partial update: only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    collection: Collection | None = None
    title: str | None = Field(None, max_length=1000)
    body: str | None = Field(None, max_length=500_000)
    tags: list[Tag] | None = Field(None, max_length=64)
    metadata: dict[str, Any] | None = Field(None, description=METADATA_RULES)


class DocumentRead(BaseModel):
    id: str
    collection: str
    title: str
    body: str
    tags: list[str]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


class DocumentPage(BaseModel):
    items: list[DocumentRead]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")
