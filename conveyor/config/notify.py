"""`notify:` in conveyor.yml: where deploys are announced (Slack, signed webhooks, Grafana annotations,
Datadog events), and which events go where.

`notify:` is a list of destinations, or a mapping with `destinations:` and `release_page:` (a URL template
for the link to a release, e.g. https://conveyor.example.com/{app}/{env}/{number}; without it, no link).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from conveyor.config.base import ENV_VAR, NAME, Strict

EVENTS = ("started", "succeeded", "failed", "rolled_back", "interrupted", "blocked", "unblocked", "freeze")
DEFAULT_EVENTS = tuple(event for event in EVENTS if event != "started")
SLACK_API = "https://slack.com/api"
DATADOG_API = "https://api.datadoghq.com"
Event = Literal["started", "succeeded", "failed", "rolled_back", "interrupted", "blocked", "unblocked", "freeze"]
EnvVar = Annotated[str, Field(pattern=ENV_VAR)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$")]


class Slack(Strict):
    """A bot token and a channel (chat.postMessage, updated in place), or an incoming webhook (posts only)."""

    channel: str | None = Field(None, min_length=1, description="Channel name (#dev) or id.")
    token_env: EnvVar | None = Field(None, description="Env var holding the bot token (xoxb-…).")
    api_url: HttpUrl = Field(SLACK_API, description="Slack's Web API base URL (set for tests).")
    webhook_url_env: EnvVar | None = Field(None, description="Env var holding an incoming-webhook URL.")

    @model_validator(mode="after")
    def _one_way_to_post(self) -> Slack:
        if self.webhook_url_env is not None:
            if self.channel is not None or self.token_env is not None:
                raise ValueError("give either webhook_url_env, or channel and token_env, not both")
        elif self.channel is None or self.token_env is None:
            raise ValueError("give channel and token_env (a bot token), or webhook_url_env (an incoming webhook)")
        return self


class Webhook(Strict):
    """A generic webhook signed per the Standard Webhooks spec with the secret (whsec_…) in `secret_env`."""

    url: HttpUrl
    secret_env: EnvVar


class Grafana(Strict):
    """A deploy marker on Grafana's graphs: an annotation (POST /api/annotations) tagged app:… and env:…,
    made with a service account token (Authorization: Bearer)."""

    api_url: HttpUrl = Field(description="Grafana's base URL, e.g. https://grafana.example.com.")
    token_env: EnvVar = Field(description="Env var holding a service account token (glsa_…).")
    dashboard_uid: str | None = Field(None, min_length=1, description="Only on this dashboard (default: "
                                      "an organisation-wide annotation, shown where its tags are queried).")
    tags: list[str] = Field(default_factory=list, description="More tags, beside conveyor, app:… and env:….")


class Datadog(Strict):
    """A Datadog event (POST /api/v1/events with the DD-API-KEY header), tagged app:… and env:…."""

    api_key_env: EnvVar = Field(description="Env var holding a Datadog API key.")
    api_url: HttpUrl = Field(DATADOG_API, description="The site's API URL (api.datadoghq.eu, …; set for tests).")
    tags: list[str] = Field(default_factory=list, description="More tags, beside conveyor, app:… and env:….")


KINDS = ("slack", "webhook", "grafana", "datadog")


class Destination(Strict):
    name: Annotated[str, Field(pattern=NAME)] | None = Field(
        None, description="How `outbox` and `notify test` name it (default: slack-CHANNEL, webhook-HOST)."
    )
    events: list[Event] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)
    environments: list[Annotated[str, Field(pattern=NAME)]] | None = Field(
        None, description="Only these environments' events (default: every environment)."
    )
    slack: Slack | None = None
    webhook: Webhook | None = None
    grafana: Grafana | None = None
    datadog: Datadog | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        if sum(getattr(self, kind) is not None for kind in KINDS) != 1:
            raise ValueError("a destination is one of `slack:`, `webhook:`, `grafana:` or `datadog:` "
                             "(exactly one of them)")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def settings(self) -> Slack | Webhook | Grafana | Datadog:
        return getattr(self, self.kind)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.slack is not None:
            where = self.slack.channel or "webhook"
        elif self.webhook is not None or self.grafana is not None:
            url = self.webhook.url if self.webhook else self.grafana.api_url if self.grafana else ""
            where = re.sub(r"^https?://", "", url).split("/")[0]
        else:
            where = "events"
        return f"{self.kind}-" + (re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-") or "default")

    def secret_envs(self) -> list[str]:
        """Names of the env vars holding this destination's secrets (their values are redacted everywhere)."""
        if self.slack is not None:
            return [name for name in (self.slack.token_env, self.slack.webhook_url_env) if name]
        if self.grafana is not None:
            return [self.grafana.token_env]
        if self.datadog is not None:
            return [self.datadog.api_key_env]
        return [self.webhook.secret_env] if self.webhook else []


class Notify(Strict):
    destinations: list[Destination] = Field(default_factory=list)
    release_page: HttpUrl | None = Field(
        None, description="URL template of a release's page: {app}, {env}, {number} are filled in."
    )
    trace_page: HttpUrl | None = Field(
        None, description="URL template of a trace in your tracing UI: {trace_id} is filled in (e.g. "
                          "https://grafana.example.com/explore?traceId={trace_id})."
    )

    @model_validator(mode="before")
    @classmethod
    def _a_list_is_the_destinations(cls, value: Any) -> Any:
        return {"destinations": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _names_once(self) -> Notify:
        seen: set[str] = set()
        for destination in self.destinations:
            if destination.label in seen:
                raise ValueError(f"two destinations are named '{destination.label}': give one a `name:`")
            seen.add(destination.label)
        return self
