"""The settings an environment's `target: {type: heroku, …}` takes, registered under that type."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

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
    tasks_as: Literal["one-off-dynos", "release-phase"] = Field(
        "one-off-dynos", description="How pre-deploy tasks run. `one-off-dynos` (the default): each of the "
        "environment's `tasks:` in its own one-off dyno of the new image, with the new config vars, its output "
        "and exit status recorded per task, before the formation changes; Heroku's one-off dynos take the "
        "image of a process type, so the image is first released as `task_process_type` (quantity 0), which "
        "is one extra Heroku release that leaves the serving types' images and config alone. "
        "`release-phase`: the image is also released as the `release` process type and Heroku runs the "
        "image's own command as the release phase (conveyor cannot give it a command: `tasks:` must be "
        "empty); it costs no extra release, but it is one command the image carries, not conveyor's tasks.")
    task_process_type: str = Field(
        "conveyor-task", pattern=PROCESS_TYPE, description="The process type (scaled to 0) whose image a "
        "one-off task dyno runs.")
    task_size: str | None = Field(
        None, description="Dyno size of one-off task dynos (`standard-1X`, `performance-m`, …; default: "
        "Heroku's).")
    timeout: float = Field(300, gt=0, description="Seconds the release and its dynos have to come up.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between reads of a release or dynos.")

    @model_validator(mode="after")
    def _task_type_is_its_own(self) -> HerokuTarget:
        if self.task_process_type in [*self.process_types, "release"]:
            raise ValueError(f"task_process_type {self.task_process_type!r} must not be a serving process type "
                             "or `release`: task dynos take its image before the formation changes")
        return self


register_target(TARGET_TYPE, HerokuTarget)
