"""The settings an environment's `target: {type: heroku, …}` takes, registered under that type."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from conveyor.config.models import ENV_VAR, TargetSettings, register_target

TARGET_TYPE = "heroku"
HEROKU_APP = r"^[a-z][a-z0-9-]{1,29}$"
PROCESS_TYPE = r"^[a-z][a-z0-9_-]*$"


class HerokuTarget(TargetSettings):
    """A Heroku app; each release copies the image into the app's registry repository per process type and
    sets the formation to it by digest. Dynos are judged by Heroku's own state (up / crashed): the
    environment's `health:` settings do not apply."""

    type: Literal["heroku"]
    health_applies: ClassVar[bool] = False
    app: str = Field(pattern=HEROKU_APP, description="The Heroku app this environment is.")
    process_types: list[Annotated[str, Field(pattern=PROCESS_TYPE)]] = Field(
        default_factory=lambda: ["web"], min_length=1, description="Process types released with the image.")
    api_url: str = Field("https://api.heroku.com", description="The Platform API (another only for tests).")
    token_env: str = Field("HEROKU_API_KEY", pattern=ENV_VAR, description="Env var holding the API token.")
    registry: str = Field("registry.heroku.com", description="The app's container registry host.")
    registry_insecure: bool = Field(False, description="Plain HTTP to the registry (a local one in tests).")
    release_phase: bool = Field(
        False, description="Also release the image as the `release` process type: Heroku runs it as the "
        "release phase before the formation changes, and a failure there changes nothing that serves.")
    timeout: float = Field(300, gt=0, description="Seconds the release and its dynos have to come up.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between reads of a release or dynos.")


register_target(TARGET_TYPE, HerokuTarget)
