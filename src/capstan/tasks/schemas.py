"""Request and response bodies for /v1/tasks, /v1/task-types and /v1/workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from capstan.storable import MAX_JSON_DEPTH, StorableInput, to_utc

TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class TaskSubmit(StorableInput):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(..., min_length=1, max_length=100)
    input: dict[str, Any] = Field(
        default_factory=dict,
        description=f"the task type's input; nests at most {MAX_JSON_DEPTH} levels, no NUL, "
        "lone surrogates, NaN or infinities",
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    max_attempts: int | None = Field(None, ge=1, le=100)
    run_at: datetime | None = Field(None, description="not before this time (UTC if naive)")
    priority: int = Field(0, ge=0, le=9, description="0 (default) to 9 (first)")
    time_limit_seconds: float | None = Field(None, gt=0, le=86_400)
    queue: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")

    @field_validator("run_at")
    @classmethod
    def _run_at_in_utc(cls, value: datetime | None) -> datetime | None:
        # Normalized at the door: SQLite keeps no offset, so +05:00 must become its UTC instant.
        return None if value is None else to_utc(value)


class TaskRead(BaseModel):
    id: str
    url: str
    type: str
    queue: str
    priority: int
    status: TaskStatus
    input: dict[str, Any]
    result: Any | None
    error: str | None
    attempts: int
    max_attempts: int
    time_limit_seconds: float
    idempotency_key: str | None
    progress: float
    progress_message: str | None
    cancel_requested: bool
    worker_id: str | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class TaskPage(BaseModel):
    items: list[TaskRead]
    next_cursor: str | None = None


class TaskTypeRead(BaseModel):
    name: str
    description: str
    queue: str
    input_schema: dict[str, Any]
    admin_only: bool = Field(False, description="submitting it needs an admin API key")


class WorkerTask(BaseModel):
    id: str
    type: str
    running_for_seconds: float
    time_limit_seconds: float
    progress: float
    stuck: bool = Field(
        description="running past its time limit: the worker is not getting it done"
    )


class WorkerRead(BaseModel):
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    status: Literal["alive", "stale"]
    loop_lag_seconds: float
    started_at: datetime
    last_heartbeat_at: datetime
    running: list[WorkerTask]
