"""What every config model shares: strict models (unknown keys are errors) and the name patterns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
