"""The heroku target. A release, step by step:

1. copy the image by digest into the app's registry repository for each process type (the spec's
   "copies", run by the pipeline before anything else);
2. set the config vars conveyor manages (the environment's `env:` values and `secrets:` read by name at
   apply time; the names it manages are kept in CONVEYOR_MANAGED_VARS on the app, so a key dropped from the
   config is removed, and no other key is touched);
3. `PATCH /apps/{app}/formation` with each process type's image digest (and `release` when the release
   phase is on), then follow the release Heroku makes: its release phase output streamed and recorded,
   its status awaited (pending → succeeded / failed);
4. wait for the release's dynos to come `up`; a crashed one fails the release with its last log lines.

A failure before Heroku makes the release current changes nothing that serves, unless the config vars
changed (they are a release of their own on Heroku); any later failure asks the pipeline to re-apply the
previous release's stored spec (Outcome.previous_still_serving = False), which is also how `rollback`
works: the record, not Heroku's own rollback, says what serves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conveyor.config.models import AppConfig, Environment
from conveyor.errors import BadInput, TargetError
from conveyor.targets.base import SWITCHED, Artifact, LiveState, Outcome, Reporter, release_values
from conveyor.targets.heroku.settings import TARGET_TYPE

MANAGED = "CONVEYOR_MANAGED_VARS"  # the app's config var naming the keys conveyor set
LOG_LINES = 20


class Heroku:
    def __init__(self, state_dir: Path) -> None:
        self._apis: dict[tuple[str, str], Any] = {}

    def render(self, app: AppConfig, env: Environment, artifact: Artifact) -> dict[str, Any]:
        target = env.target
        if env.tasks or (env.tasks is None and app.tasks):
            raise BadInput(f"{env.name}: pre-deploy tasks do not run on a heroku target yet; set `tasks: []` and "
                           "`release_phase: true` (the image's release process runs as Heroku's release phase)")
        kinds = list(target.process_types) + (["release"] if target.release_phase else [])
        repository = {kind: f"{target.registry}/{target.app}/{kind}" for kind in kinds}
        return {
            **release_values(TARGET_TYPE, app.app, env.name, artifact),
            "heroku": {"app": target.app, "api_url": target.api_url, "token_env": target.token_env,
                       "timeout": target.timeout, "poll_interval": target.poll_interval},
            "process_types": kinds,
            "config_vars": dict(env.env),
            "secrets": list(env.secrets),  # names only: values are read from the environment at apply time
            "copies": [{"digest": artifact.digest, "tag": artifact.sha, "from": artifact.repository,
                        "to": {"repository": repository[kind], "insecure": target.registry_insecure,
                               "username": "_", "password_env": target.token_env}} for kind in kinds],
            "tasks": [],
        }

    def preflight(self, spec: dict[str, Any]) -> list[str]:
        app = self._api(spec).get(f"/apps/{spec['heroku']['app']}")
        missing = [name for name in spec["secrets"] if name not in os.environ]
        if missing:
            raise BadInput(f"secret env var(s) not set: {', '.join(missing)}")
        return [f"Heroku app {app['name']} answers at {spec['heroku']['api_url']}"]

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        raise TargetError("pre-deploy tasks do not run on a heroku target yet (use release_phase: true)")

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        api, app = self._api(spec), spec["heroku"]["app"]
        api.say = lambda line: report("heroku", line)
        config_changed = self._set_config_vars(api, spec, report)
        release = self._update_formation(api, spec, report)
        release, output = self._follow_release(api, spec, release, report)
        if release["status"] != "succeeded":
            return Outcome(False, f"Heroku release v{release['version']} of {app} {release['status']} in its "
                           "release phase", logs=output, previous_still_serving=not config_changed)
        report(SWITCHED, f"Heroku release v{release['version']} of {app} is current ({release_label})")
        failure = self._await_dynos(api, spec, release, report)
        if failure is not None:
            reason, logs = failure
            return Outcome(False, reason, logs=logs, previous_still_serving=False)
        report("done", f"{app}: {', '.join(spec['process_types'])} up on {spec['digest']}")
        return Outcome(True)

    def _set_config_vars(self, api: Any, spec: dict[str, Any], report: Reporter) -> bool:
        """Set the managed keys that differ and remove the ones no longer managed; True when any changed."""
        app = spec["heroku"]["app"]
        current = api.get(f"/apps/{app}/config-vars")
        wanted = {**spec["config_vars"], **{name: os.environ.get(name, "") for name in spec["secrets"]}}
        before = set(filter(None, current.get(MANAGED, "").split(",")))
        wanted[MANAGED] = ",".join(sorted(wanted))
        changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
        changes.update({k: None for k in before - set(wanted) if k in current})
        if not changes:
            return False
        api.call("PATCH", f"/apps/{app}/config-vars", body=changes)
        report("config", f"{app}: config vars set: {', '.join(sorted(changes))} (values not shown)")
        return True

    def _update_formation(self, api: Any, spec: dict[str, Any], report: Reporter) -> dict[str, Any]:
        app = spec["heroku"]["app"]
        updates = [{"type": kind, "docker_image": spec["digest"]} for kind in spec["process_types"]]
        api.call("PATCH", f"/apps/{app}/formation", body={"updates": updates}, docker=True)
        newest = api.get(f"/apps/{app}/releases", headers={"Range": "version ..; order=desc, max=1"})
        report("formation", f"{app}: formation set to {spec['digest']} ({', '.join(spec['process_types'])}); "
                            f"Heroku made release v{newest[0]['version']}")
        return newest[0]

    def _follow_release(self, api: Any, spec: dict[str, Any], release: dict[str, Any],
                        report: Reporter) -> tuple[dict[str, Any], list[str]]:
        output: list[str] = []
        if release.get("output_stream_url"):
            for line in api.lines(release["output_stream_url"]):
                output.append(line)
                report("release-phase", line)
        path = f"/apps/{spec['heroku']['app']}/releases/{release['id']}"
        deadline = time.monotonic() + spec["heroku"]["timeout"]
        while release["status"] == "pending":
            if time.monotonic() > deadline:
                raise TargetError(f"Heroku release v{release['version']} still pending after "
                                  f"{spec['heroku']['timeout']:g}s", output)
            time.sleep(spec["heroku"]["poll_interval"])
            release = api.get(path)
        return release, output

    def _await_dynos(self, api: Any, spec: dict[str, Any], release: dict[str, Any],
                     report: Reporter) -> tuple[str, list[str]] | None:
        """None when every dyno of the release's process types is up, else why not and the last log lines."""
        app = spec["heroku"]["app"]
        kinds = [k for k in spec["process_types"] if k != "release"]
        deadline = time.monotonic() + spec["heroku"]["timeout"]
        while True:
            dynos = [d for d in api.get(f"/apps/{app}/dynos")
                     if d["type"] in kinds and d["release"]["id"] == release["id"]]
            crashed = next((d for d in dynos if d["state"] == "crashed"), None)
            if crashed is not None:
                return f"dyno {crashed['name']} of {app} crashed", self._logs(api, app, crashed["name"])
            if dynos and {d["type"] for d in dynos} == set(kinds) and all(d["state"] == "up" for d in dynos):
                report("dynos", f"{app}: {', '.join(sorted(d['name'] for d in dynos))} up")
                return None
            if time.monotonic() > deadline:
                states = ", ".join(f"{d['name']} {d['state']}" for d in dynos) or "no dynos"
                return f"{app}'s dynos not up after {spec['heroku']['timeout']:g}s ({states})", []
            time.sleep(spec["heroku"]["poll_interval"])

    def _logs(self, api: Any, app: str, dyno: str) -> list[str]:
        session = api.call("POST", f"/apps/{app}/log-sessions", body={"dyno": dyno, "lines": LOG_LINES})
        return api.lines(session["logplex_url"])

    def live(self, app: str, env: str, spec: dict[str, Any] | None = None) -> LiveState | None:
        """What the app's formation runs and whether its managed config vars are as recorded: the spec's
        image when both are, else what differs."""
        if spec is None:
            return None
        api, heroku_app = self._api(spec), spec["heroku"]["app"]
        formation = {f["type"]: (f.get("docker_image") or {}).get("id")
                     for f in api.get(f"/apps/{heroku_app}/formation")}
        config = api.get(f"/apps/{heroku_app}/config-vars")
        differences = [f"{kind} runs {formation.get(kind) or 'nothing'}" for kind in spec["process_types"]
                       if kind != "release" and formation.get(kind) != spec["digest"]]
        differences += [f"config var {k} differs" for k, v in spec["config_vars"].items() if config.get(k) != v]
        differences += [f"secret {k} is not set" for k in spec["secrets"] if k not in config]
        newest = api.get(f"/apps/{heroku_app}/releases", headers={"Range": "version ..; order=desc, max=1"})
        label = f"Heroku v{newest[0]['version']}" if newest else "no Heroku release"
        if not differences:
            return LiveState(spec["image"], label, "formation and managed config vars as recorded")
        return LiveState(f"{heroku_app}: {'; '.join(differences)}", label, "drift")

    def close(self) -> None:
        for api in self._apis.values():
            api.close()
        self._apis.clear()

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False) -> int:
        raise BadInput("`conveyor run` does not support heroku targets yet (use `heroku run`)")

    def probe(self, spec: dict[str, Any]) -> str | None:
        api, app = self._api(spec), spec["heroku"]["app"]
        down = [f"{d['name']} {d['state']}" for d in api.get(f"/apps/{app}/dynos") if d["state"] != "up"]
        return f"{app}: {', '.join(down)}" if down else None

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        return self.deploy(spec, release_label, report)

    def retire(self, app: str, env: str, report: Reporter) -> None:
        raise BadInput("retire does not remove Heroku apps: delete or scale the app on Heroku itself")

    def _api(self, spec: dict[str, Any]) -> Any:
        from conveyor.targets.heroku.api import HerokuAPI

        settings = spec["heroku"]
        key = (settings["api_url"], settings["token_env"])
        if key not in self._apis:
            token = os.environ.get(settings["token_env"])
            if not token:
                raise BadInput(f"${settings['token_env']} is not set: the Heroku API token goes there")
            self._apis[key] = HerokuAPI(settings["api_url"], token, settings["token_env"], lambda _: None)
        return self._apis[key]
