"""What the API accepts is what it can store and read back, in both modes.

JSON parsing accepts values that no store round-trips: lone UTF-16 surrogates ("\\ud800"),
which cannot be encoded as UTF-8 (PostgreSQL refuses them; SQLite keeps them and every later
read fails to serialize); NUL characters, which PostgreSQL text and jsonb refuse; NaN and
infinities (`NaN`, `1e400`), which JSON cannot represent; and nesting deep enough to overflow
a recursive decoder or serializer on the way back out. `storable_problem` finds the first
such value, with its path, so request models refuse it at the door (422) and
`capstan data check` finds rows stored before the rule existed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

# How deep one field's JSON value (a document's metadata, a task's input) may nest: the field's
# own object is level 1. Generous for real data, far below any decoder's recursion limit.
MAX_JSON_DEPTH = 32


def string_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if text.isascii():
        return "contains a NUL character" if "\x00" in text else None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)"
    return "contains a NUL character" if "\x00" in text else None


def storable_problem(value: Any, *, where: str, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """The first reason `value` (parsed JSON) cannot be stored and read back, or None."""
    # Iterative, so checking a hostile 10,000-level document cannot itself overflow the stack.
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = string_problem(item)
            if problem:
                return f"{path}: {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{path}: {item} is not a JSON number (NaN and infinities are refused)"
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                return f"{path}: nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    problem = string_problem(key) if isinstance(key, str) else None
                    if problem:
                        return f"{path}: a key {problem}"
                    stack.append((child, f"{path}.{_short(key)}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def to_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (naive means UTC); ValueError outside the calendar."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the time is outside the range of dates this API stores") from exc


def _short(key: object) -> str:
    text = str(key)
    return text if len(text) <= 40 else text[:37] + "..."


class StorableInput(BaseModel):
    """A request body whose every field must be storable (see the module docstring)."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                problem = storable_problem(name, where="a field name") or storable_problem(
                    value, where=_short(name)
                )
                if problem:
                    raise PydanticCustomError("unstorable", problem)
        return data
