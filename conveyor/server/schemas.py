"""The API's request and response bodies (they are the published OpenAPI document's schemas).

Views the CLI prints as `--json` (status, history rows, diff, outbox) are passed through as objects: their
fields are the CLI's, documented in the README, and one definition of them is kept, in pipeline/views.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
REF = Field(min_length=1, max_length=256, pattern=r"^[^-\s][^\s]*$")
REASON = Field("", max_length=2000)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    kind: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class AppIn(Body):
    name: str = Field(pattern=NAME, max_length=63)
    repo_url: str = Field(min_length=1, max_length=2000)


class AppOut(BaseModel):
    name: str
    repo_url: str
    created_at: str
    created_by: str
    stages: list[str] = Field(default_factory=list, description="Its environments, as its config last said.")


class Removed(BaseModel):
    removed: str


class TokenIn(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    scopes: list[str] = Field(min_length=1, max_length=50)


class TokenOut(BaseModel):
    name: str
    scopes: list[str]
    created_at: str
    last_used_at: str | None


class NewToken(TokenOut):
    token: str = Field(description="Shown once; only its hash is kept.")


class BuildIn(Body):
    ref: str = REF


class DeployIn(Body):
    env: str = Field(pattern=NAME, max_length=63)
    ref: str = REF
    reason: str = REASON
    hotfix: bool = False
    force: bool = False
    dry_run: bool = False
    wait_for_ci: bool = Field(False, description="Wait (up to ci.timeout) for the commit's pending CI.")


class PromoteIn(Body):
    source: str | None = Field(None, pattern=NAME, max_length=63)
    target: str | None = Field(None, pattern=NAME, max_length=63)
    only: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^-\s][^\s]*$")
    reason: str = REASON
    force: bool = False
    dry_run: bool = False
    wait_for_ci: bool = Field(False, description="Wait (up to ci.timeout) for the commit's pending CI.")


class RollbackIn(Body):
    env: str = Field(pattern=NAME, max_length=63)
    to: int | None = Field(None, ge=1, le=2**31 - 1)
    reason: str = REASON
    force: bool = False
    dry_run: bool = False


class OperationOut(BaseModel):
    id: int
    app: str
    env: str | None
    kind: str
    params: dict[str, Any]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "superseded"]
    exit_code: int | None
    result: dict[str, Any] | None = Field(description="What `conveyor … --json` prints for this operation.")
    actor: str
    origin: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    replica: str | None
    attempts: int
    note: str
    queue_position: int | None


class OperationList(BaseModel):
    operations: list[OperationOut]
    next_before: int | None


class History(BaseModel):
    releases: list[dict[str, Any]]
    next_before: int | None


class LockIn(Body):
    env: str | None = Field(None, pattern=NAME, max_length=63)
    scope: Literal["env", "app", "org"] = "env"
    reason: str = Field(min_length=1, max_length=2000)
    until: str | None = Field(None, max_length=100)


class Unlocked(BaseModel):
    lifted: int
    still_blocked_by: list[dict[str, Any]]


class ReasonIn(Body):
    reason: str = Field(min_length=1, max_length=2000)
    force: bool = False


class Recovered(BaseModel):
    interrupted: list[dict[str, Any]]


class Flushed(BaseModel):
    undelivered: list[dict[str, Any]]


class Recovery(BaseModel):
    expired_leases: list[dict[str, Any]]
    unfinished_releases: list[dict[str, Any]]
    interrupted_releases: list[dict[str, Any]]
    undelivered: list[dict[str, Any]]
    lapsed_operations: list[OperationOut]


class DeliveryDay(BaseModel):
    day: str
    deployments: int
    failures: int


class Delivery(BaseModel):
    """Delivery (DORA) metrics at each app's last stage; pipeline/delivery.py says how each is counted."""

    days: int
    deployments: int
    deployment_frequency: float = Field(description="Successful changes per day.")
    lead_time_seconds: float | None = Field(description="Median commit → succeeded in the last stage.")
    change_failure_rate: float | None = Field(description="Share of changes that failed or were rolled back.")
    time_to_restore_seconds: float | None = Field(description="Median failure → next good release.")
    daily: list[DeliveryDay]


class Health(BaseModel):
    ok: bool
    replica: str
    running: list[int]
