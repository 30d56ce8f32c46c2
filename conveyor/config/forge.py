"""The forge sections of conveyor.yml: where the code is hosted (`forge:`), the CI gate (`ci:`), what a
forge event triggers (`triggers:`) and the release pull request (`release_pr:`).

    forge:
      github:
        repo: acme/shop
        token_env: GITHUB_TOKEN            # or app: {id, installation_id, private_key_env}
        webhook_secret_env: GITHUB_WEBHOOK_SECRET
    ci: {require: [build, test], allow_failures: [lint], timeout: 30m}
    triggers:
      - {on: push, branch: main, deploy: staging}
      - {on: pull_request_merged, base: release, promote: production}
    release_pr: {stage: staging, target: release, auto_merge_after: 24h}

Only GitHub exists today; `forge:` is a mapping by forge so GitLab can be added beside it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from conveyor.config.base import ENV_VAR, NAME, Strict

GITHUB_API = "https://api.github.com"
EnvVar = Annotated[str, Field(pattern=ENV_VAR)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$")]


def _branch_name(value: str) -> str:
    # What git check-ref-format allows, minus the rarely used characters: these names go to git and to the
    # forge's API, and a leading dash would read as an option.
    if ".." in value or "//" in value or value.endswith(("/", ".", ".lock")):
        raise ValueError(f"not a branch name: {value!r}")
    return value


Branch = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$", max_length=200),
                   AfterValidator(_branch_name)]
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: Any) -> Any:
    """A duration as seconds: a number is seconds already; text is `90`, `90s`, `30m`, `24h` or `2d`."""
    if isinstance(value, str):
        found = DURATION.match(value)
        if not found:
            raise ValueError(f"not a duration: {value!r} (write e.g. 90s, 30m, 24h, 2d)")
        return float(found.group(1)) * UNIT_SECONDS[found.group(2) or "s"]
    return value


class GitHubApp(Strict):
    """A GitHub App installation: conveyor signs a JWT (RS256) with the app's key and trades it for an
    installation token, refreshed before it expires."""

    id: int = Field(gt=0, description="The GitHub App's id.")
    installation_id: int = Field(gt=0, description="The installation on the repo's owner.")
    private_key_env: EnvVar = Field(description="Env var holding the app's PEM private key.")


class GitHubDeployments(Strict):
    """Each release is a GitHub deployment of its commit to its environment, with statuses as it goes."""

    enabled: bool = Field(True, description="Create a GitHub deployment for each release.")
    environment_urls: dict[Annotated[str, Field(pattern=NAME)], HttpUrl] = Field(
        default_factory=dict, description="Per environment, the URL it serves at (shown on GitHub).")


class GitHub(Strict):
    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="OWNER/NAME.")
    api_url: HttpUrl = Field(GITHUB_API, description="The REST API's base URL (GitHub Enterprise, tests).")
    token_env: EnvVar | None = Field(None, description="Env var holding a token (a PAT or CI's GITHUB_TOKEN).")
    app: GitHubApp | None = Field(None, description="Authenticate as a GitHub App installation instead.")
    webhook_secret_env: EnvVar | None = Field(
        None, description="Env var holding the webhook secret that signs deliveries (X-Hub-Signature-256).")
    deployments: GitHubDeployments = Field(
        default_factory=GitHubDeployments, description="GitHub Deployments for every release (on by default).")

    def secret_envs(self) -> list[str]:
        """The env vars holding this forge's secrets: their values are redacted wherever conveyor writes."""
        names = [self.token_env, self.app.private_key_env if self.app else None, self.webhook_secret_env]
        return [name for name in names if name]

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> GitHub:
        if self.token_env and self.app:
            raise ValueError("give token_env or app, not both")
        if not self.token_env and not self.app:
            raise ValueError("give token_env (a token) or app (a GitHub App installation)")
        return self


class Forge(Strict):
    github: GitHub | None = Field(None, description="The app's repository on GitHub.")


class CIGate(Strict):
    """Before a deploy or promotion the commit's CI must be green: its combined status and its check runs."""

    require: list[str] = Field(
        default_factory=list,
        description="Status contexts / check names that must pass (default: every one that reported).")
    allow_failures: list[str] = Field(default_factory=list, description="Checks whose failure does not block.")
    timeout: float = Field(1800, gt=0, description="How long --wait-for-ci waits, in seconds (or 30m, 1h).")

    _timeout = field_validator("timeout", mode="before")(seconds)


class Trigger(Strict):
    """One forge event and what it starts. `on: push` deploys `branch`'s head to `deploy` once its CI is
    green; `on: pull_request_merged` promotes the merge commit of a PR into `base` with --only."""

    on: Literal["push", "pull_request_merged"]
    branch: Branch | None = Field(None, description="For on: push, the branch pushed to.")
    base: Branch | None = Field(None, description="For on: pull_request_merged, the PR's base branch.")
    deploy: Annotated[str, Field(pattern=NAME)] | None = Field(None, description="Environment to deploy to.")
    promote: Annotated[str, Field(pattern=NAME)] | None = Field(None, description="Environment to promote to.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true, as GitHub Actions users know.
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if key is True else key): item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _shape(self) -> Trigger:
        if self.on == "push" and (self.branch is None or self.deploy is None or self.base or self.promote):
            raise ValueError("on: push takes branch: and deploy:")
        if self.on == "pull_request_merged" and (self.base is None or self.promote is None
                                                 or self.branch or self.deploy):
            raise ValueError("on: pull_request_merged takes base: and promote:")
        return self

    @property
    def env(self) -> str:
        return self.deploy or self.promote or ""


class ReleasePR(Strict):
    """The pull request that carries what the source stage runs to the branch whose merge promotes it."""

    stage: Annotated[str, Field(pattern=NAME)] = Field(
        "staging", description="The source stage: each of its succeeded releases opens or updates the PR.")
    source: Branch | None = Field(
        None, description="The PR's head branch (default: the stage's release branch, release_refs' prefix + stage).")
    target: Branch = Field("release", description="The PR's base: merging into it promotes.")
    auto_merge_after: float | None = Field(
        None, gt=0, description="Merge the PR this long after it was opened (e.g. 24h), never while a block holds.")

    _auto_merge_after = field_validator("auto_merge_after", mode="before")(seconds)
