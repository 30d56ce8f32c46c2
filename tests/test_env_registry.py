"""An environment with its own `registry:` gets the artifact copied there by digest before the apply,
end to end through the real CLI (real registry, podman, HAProxy). The copy's other paths (another
registry, missing blobs, resume, credentials, a digest that arrives different) are in test_registry_copy.py."""

from __future__ import annotations

from tests.e2e import App

PRODUCTION_POLICY = "    policy:\n      require_promotion_from: staging\n"


def _own_registry(host: str) -> object:
    def change(text: str) -> str:
        return text.replace(PRODUCTION_POLICY, PRODUCTION_POLICY + f"    registry:\n      image: {host}/hello-prod\n"
                            "      insecure: true\n")
    return change


def test_promotion_copies_the_digest_to_the_environments_registry(app: App, registry) -> None:
    sha = app.reconfigure(_own_registry(registry.host))  # type: ignore[arg-type]
    app.ok("deploy", "staging", sha)
    staged = app.status()["staging"]["live"]
    assert staged["image"] == f"{registry.host}/hello@{staged['digest']}"  # staging has no registry of its own
    result = app.ok("promote")
    assert "copy " + staged["digest"] in result.err
    assert "mounted" in result.err  # the same registry: linked, not sent
    live = app.status()["production"]["live"]
    assert live["image"] == f"{registry.host}/hello-prod@{staged['digest']}"
    assert app.serves("production") == "v2"
    again = app.ok("rollback", "production", "--to", "1")  # the stored spec: its copy finds nothing missing
    assert "already in the destination: nothing to copy" in again.err


def test_dry_run_lists_the_copy(app: App, registry) -> None:
    sha = app.reconfigure(_own_registry(registry.host), build=False)  # type: ignore[arg-type]
    app.ok("build", sha)
    app.ok("deploy", "staging", sha)
    plan = app.ok("promote", "--dry-run").out
    assert f"to {registry.host}/hello-prod (only missing blobs)" in plan
