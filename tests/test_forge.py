"""The GitHub adapter (conveyor/forge/github.py) against the in-repo GitHub server over real HTTP, and the
fake's answers against githubkit's published models, so the fake cannot drift from GitHub's real shapes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from conveyor.errors import ForgeRefused, ForgeUnavailable, PullRequestExists
from conveyor.forge.base import Check
from conveyor.forge.github import AppAuth, GitHub, TokenAuth
from tests.fakes.github import FakeApp, FakeGitHub

TOKEN = "ghp_testtoken0123456789abcdef"
SHA = "a1" * 20


@pytest.fixture
def github() -> Any:
    fake = FakeGitHub("acme/hello", TOKEN)
    yield fake
    fake.close()


def client(fake: FakeGitHub, said: list[str] | None = None, **options: Any) -> GitHub:
    return GitHub("acme/hello", TokenAuth(TOKEN), api_url=fake.api_url,
                  say=said.append if said is not None else print, **options)


def rsa_key() -> tuple[str, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


# ---------------------------------------------------------------------------------------------- CI state


def test_statuses_and_check_runs_merge_into_one_verdict_per_context_with_links(github: FakeGitHub) -> None:
    github.set_status(SHA, "ci/lint", "success", target_url="https://ci.example.com/lint/1")
    github.set_status(SHA, "ci/build", "pending")
    github.set_status(SHA, "ci/build", "failure", target_url="https://ci.example.com/build/2")  # newest wins
    first = github.add_check_run(SHA, "test", conclusion="failure")
    github.add_check_run(SHA, "test", conclusion="success")  # a re-run: the newest run counts
    github.add_check_run(SHA, "ci/lint", status="in_progress")  # the same name in both: the worse state
    checks = {c.name: c for c in client(github).ci_state(SHA).checks}
    assert checks["ci/build"] == Check("ci/build", "failure", "https://ci.example.com/build/2", "status", "failure")
    assert checks["test"].state == "success" and str(first) not in (checks["test"].url or "")
    assert checks["ci/lint"].state == "pending" and checks["ci/lint"].source == "status+check_run"


def test_a_repo_with_only_check_runs_reads_green_not_pending_forever(github: FakeGitHub) -> None:
    """shipit#808: GitHub Actions reports check runs only, and the combined status alone says `pending`."""
    github.add_check_run(SHA, "build")
    github.add_check_run(SHA, "test", conclusion="skipped")
    combined = httpx.get(f"{github.api_url}/repos/acme/hello/commits/{SHA}/status",
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert combined["state"] == "pending"  # what a status-only gate would see, forever
    state = client(github).ci_state(SHA)
    assert [(c.name, c.state) for c in state.checks] == [("build", "success"), ("test", "success")]


def test_lists_follow_the_link_header_page_by_page(github: FakeGitHub) -> None:
    github.page_size = 2
    for number in range(5):
        github.add_check_run(SHA, f"job-{number}")
    for number in range(3):
        github.set_status(SHA, f"status-{number}", "success")
    state = client(github).ci_state(SHA)
    assert len(state.checks) == 8
    assert len(github.calls("GET", "/check-runs$")) == 3 and len(github.calls("GET", "/status$")) == 2
    assert [r.query.get("page") for r in github.calls("GET", "/check-runs$")] == [None, "2", "3"]


# ---------------------------------------------------------------------------------------------- auth


def test_an_app_installation_token_comes_from_a_verified_jwt_and_is_renewed_before_it_expires() -> None:
    private, public = rsa_key()
    app = FakeApp(id=4711, installation_id=99, public_key_pem=public, token_ttl=3600)
    now = [time.time()]
    fake = FakeGitHub("acme/hello", None, app=app, clock=lambda: now[0])
    try:
        github = GitHub("acme/hello", AppAuth(4711, 99, private, "APP_KEY"), api_url=fake.api_url,
                        clock=lambda: now[0])
        github.ci_state(SHA)
        github.ci_state(SHA)
        assert len(app.issued) == 1  # kept while valid
        assert app.jwts[0]["iss"] == "4711" and app.jwts[0]["exp"] - app.jwts[0]["iat"] <= 600
        now[0] += 3600 - 299  # within five minutes of expires_at
        github.ci_state(SHA)
        assert len(app.issued) == 2
        used = {r.authorization for r in fake.requests if "/commits/" in r.path}
        assert used == {f"Bearer {token}" for token in app.issued}
        from githubkit_schemas.latest import models

        jwt = github.auth.jwt(now[0])  # type: ignore[union-attr]
        answer = httpx.post(f"{fake.api_url}/app/installations/99/access_tokens",
                            headers={"Authorization": f"Bearer {jwt}"})
        models.InstallationToken.model_validate(answer.json())
    finally:
        fake.close()


def test_a_bad_app_key_and_a_refused_token_are_one_line_without_the_secret(github: FakeGitHub) -> None:
    with pytest.raises(ForgeRefused) as refused:
        GitHub("acme/hello", TokenAuth("ghp_wrong0123456789"), api_url=github.api_url).ci_state(SHA)
    assert "401 Bad credentials" in refused.value.message and "ghp_wrong" not in refused.value.message
    assert "\n" not in refused.value.message
    with pytest.raises(ForgeRefused) as bad_key:
        GitHub("acme/hello", AppAuth(1, 2, "-----BEGIN nonsense", "APP_KEY"), api_url=github.api_url).ci_state(SHA)
    assert bad_key.value.message == "APP_KEY does not hold a PEM private key (the GitHub App's .pem file)"


# ---------------------------------------------------------------------------------------------- rate limits, outages


@pytest.mark.parametrize("how", ["retry-after", "reset", "secondary"])
def test_a_rate_limited_answer_is_waited_out_with_progress_then_succeeds(github: FakeGitHub, how: str) -> None:
    github.add_check_run(SHA, "build")
    github.rate_limit(2 if how == "secondary" else 1, how, seconds=1)
    said: list[str] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    state = client(github, said, secondary_backoff=0.05, sleep=sleep).ci_state(SHA)
    assert state.checks[0].state == "success"
    assert said and all("waiting" in line and "retrying" in line for line in said)
    if how == "secondary":
        assert slept == [0.05, 0.1]  # exponential backoff
    else:
        assert 0 < slept[0] <= 2.5


def test_an_answer_that_spends_the_last_request_makes_the_next_call_wait_for_the_reset(github: FakeGitHub) -> None:
    github.spend(30)
    said: list[str] = []
    slept: list[float] = []
    gh = client(github, said, sleep=slept.append)
    gh.ci_state(SHA)  # its first request spends the window; its second waits for the reset
    assert len(slept) == 1 and 28 <= slept[0] <= 31
    assert "rate limit is spent; waiting" in said[0]
    gh.ci_state(SHA)
    assert len(slept) == 1  # a fresh window: no more waiting


def test_a_wait_longer_than_conveyor_waits_fails_at_once_saying_when_to_retry(github: FakeGitHub) -> None:
    github.rate_limit(1, "retry-after", seconds=900)
    slept: list[float] = []
    with pytest.raises(ForgeUnavailable) as unavailable:
        client(github, max_wait=60, sleep=slept.append).ci_state(SHA)
    assert unavailable.value.retry_after == 900 and not slept
    assert "retry-after 900" in unavailable.value.message


def test_an_outage_is_forge_unavailable(github: FakeGitHub) -> None:
    gh = client(github)
    github.down()
    with pytest.raises(ForgeUnavailable, match="unreachable"):
        gh.ci_state(SHA)


# ---------------------------------------------------------------------------------------------- pulls, deployments


def test_pull_requests_open_then_exist_update_comment_assign_and_merge(github: FakeGitHub) -> None:
    gh = client(github)
    opened = gh.open_pull(head="staging", base="release", title="Release", body="one")
    with pytest.raises(PullRequestExists, match="A pull request already exists for acme:staging"):
        gh.open_pull(head="staging", base="release", title="Release", body="two")
    found = gh.find_pull(head="staging", base="release")
    assert found is not None and found.number == opened.number
    assert gh.update_pull(opened.number, body="two").body == "two"
    gh.comment(opened.number, "hello")
    gh.assign(opened.number, ["sampledev"])
    assert gh.get_pull(opened.number).assignees == ("sampledev",)
    merge = gh.merge_pull(opened.number)
    merged = gh.get_pull(opened.number)
    assert merged.merged and merged.merge_commit_sha == merge
    assert gh.find_pull(head="staging", base="release") is None
    with pytest.raises(ForgeRefused, match="405 Pull Request is not mergeable"):
        gh.merge_pull(opened.number)


def test_deployments_and_their_statuses(github: FakeGitHub) -> None:
    gh = client(github)
    deployment = gh.create_deployment(sha=SHA, environment="staging", payload={"release": "staging#1"},
                                      production=False)
    gh.set_deployment_status(deployment.id, "in_progress", log_url="https://conveyor.example.com/r/1")
    gh.set_deployment_status(deployment.id, "success", environment_url="https://staging.example.com")
    found = gh.find_deployment(sha=SHA, environment="staging", payload_match={"release": "staging#1"})
    assert found == deployment
    assert gh.find_deployment(sha=SHA, environment="staging", payload_match={"release": "staging#2"}) is None
    assert github.deployment_states() == [("staging", ["in_progress", "success"])]
    created = github.calls("POST", "/deployments$")[0].body
    assert created["required_contexts"] == [] and created["auto_merge"] is False


# ---------------------------------------------------------------------------------------------- the fake's shapes


def test_the_fakes_answers_validate_against_githubkits_models(github: FakeGitHub) -> None:
    """Every body conveyor reads, as githubkit's models (generated from GitHub's OpenAPI description) say."""
    from githubkit_schemas.latest import models

    github.set_status(SHA, "ci/build", "success", target_url="https://ci.example.com/1")
    github.add_check_run(SHA, "test")
    github.add_commit(SHA, "hello v2", parents=("b2" * 20,))
    gh = client(github)
    deployment = gh.create_deployment(sha=SHA, environment="staging", payload={"n": 1}, production=False)
    gh.set_deployment_status(deployment.id, "success")
    pull = gh.open_pull(head="staging", base="release", title="Release", body="")
    gh.comment(pull.number, "hi")
    gh.assign(pull.number, ["sampledev"])

    def get(path: str, method: str = "GET", body: Any = None) -> Any:
        answer = httpx.request(method, f"{github.api_url}/repos/acme/hello{path}", json=body,
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code < 300, answer.text
        return answer.json()

    models.CombinedCommitStatus.model_validate(get(f"/commits/{SHA}/status"))
    for run in get(f"/commits/{SHA}/check-runs")["check_runs"]:
        models.CheckRun.model_validate(run)
    models.Commit.model_validate(get(f"/commits/{SHA}"))
    models.Deployment.model_validate(get("/deployments")[0])
    models.DeploymentStatus.model_validate(get(f"/deployments/{deployment.id}/statuses")[0])
    models.PullRequest.model_validate(get(f"/pulls/{pull.number}"))
    models.PullRequestSimple.model_validate(get("/pulls")[0])
    models.IssueComment.model_validate(get(f"/issues/{pull.number}/comments")[0])
    models.Issue.model_validate(get(f"/issues/{pull.number}/assignees", "POST", {"assignees": ["x"]}))
    models.PullRequestMergeResult.model_validate(get(f"/pulls/{pull.number}/merge", "PUT", {}))
    error = httpx.post(f"{github.api_url}/repos/acme/hello/pulls", json={"head": "a", "base": "b"},
                       headers={"Authorization": f"Bearer {TOKEN}"}).json()
    models.ValidationError.model_validate(error)


# ---------------------------------------------------------------------------------------------- from the config

APP_CONFIG = """
app: hello
image: 127.0.0.1:5000/hello
environments:
  - name: staging
    target: {{type: container-host, port: 18080}}
forge:
  github:
    repo: acme/hello
    api_url: "{api_url}"
    app: {{id: 4711, installation_id: 99, private_key_env: HELLO_APP_KEY}}
ci: {{}}
"""


def test_forge_for_builds_the_app_client_from_the_config_and_env_and_keeps_it() -> None:
    from conveyor.config.loader import parse_config
    from conveyor.forge import forge_for

    private, public = rsa_key()
    app = FakeApp(id=4711, installation_id=99, public_key_pem=public)
    fake = FakeGitHub("acme/hello", None, app=app)
    try:
        config = parse_config(APP_CONFIG.format(api_url=fake.api_url))
        assert forge_for(parse_config(APP_CONFIG.format(api_url=fake.api_url).split("forge:")[0]), {}) is None
        with pytest.raises(ForgeRefused, match="^env var HELLO_APP_KEY is not set in conveyor's environment"):
            forge_for(config, {})
        forge = forge_for(config, {"HELLO_APP_KEY": private})
        assert forge is not None and forge.name == "github:acme/hello"
        forge.ci_state(SHA)
        assert forge_for(config, {"HELLO_APP_KEY": private}) is forge  # the token and connection are kept
        forge.ci_state(SHA)
        assert len(app.issued) == 1
        app.expiry.clear()  # GitHub revoked the installation token before its time
        forge.ci_state(SHA)
        assert len(app.issued) == 2  # renewed once, and the call went through
    finally:
        fake.close()


def test_the_app_key_and_the_token_are_redacted_like_every_secret() -> None:
    from conveyor.config.loader import parse_config
    from conveyor.pipeline.redact import secret_values

    config = parse_config(APP_CONFIG.format(api_url="http://127.0.0.1:1"))
    assert secret_values(config, {"HELLO_APP_KEY": "-----BEGIN PRIVATE KEY-----x"}) == ["-----BEGIN PRIVATE KEY-----x"]


# ------------------------------------------------------------------------------------------ real git behind the fake


def test_with_a_git_dir_pull_heads_and_merges_are_real_git(tmp_path: Any) -> None:
    import subprocess

    def git(*args: str, cwd: Any = tmp_path / "work") -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / "work")], check=True, capture_output=True)
    git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "--allow-empty", "-m", "base")
    git("push", "-q", "origin", "HEAD:refs/heads/release")
    git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "--allow-empty", "-m", "feature")
    git("push", "-q", "origin", "HEAD:refs/heads/staging")
    staged = git("rev-parse", "HEAD")
    fake = FakeGitHub("acme/hello", TOKEN, git_dir=bare)
    try:
        gh = client(fake)
        pull = gh.open_pull(head="staging", base="release", title="Release", body="")
        assert pull.head_sha == staged
        with pytest.raises(ForgeRefused, match="409 Head branch was modified"):
            gh.merge_pull(pull.number, sha="f" * 40)
        merge = gh.merge_pull(pull.number, sha=staged)
        assert git("rev-parse", "release", cwd=bare) == merge
        assert gh.commit(merge).parents[1] == staged
        assert gh.commit(merge).message.startswith("Merge pull request #1 from acme/staging")
    finally:
        fake.close()
