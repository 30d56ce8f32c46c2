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
from conveyor.errors import BadInput, OperationFailed, TargetError
from conveyor.targets.base import SWITCHED, Artifact, LiveState, Outcome, Reporter, release_values
from conveyor.targets.heroku.dynos import OneOff, run_one_off
from conveyor.targets.heroku.settings import TARGET_TYPE

MANAGED = "CONVEYOR_MANAGED_VARS"  # the app's config var naming the keys conveyor set
LOG_LINES = 20
OUTAGE_STATES = {"crashed", "down"}
RUN_TIME_TO_LIVE = 3600.0  # `conveyor run`: a one-off command (a console, a backfill) may take a while


class Heroku:
    def __init__(self, state_dir: Path) -> None:
        self._apis: dict[tuple[str, str], Any] = {}

    def render(self, app: AppConfig, env: Environment, artifact: Artifact) -> dict[str, Any]:
        target = env.target
        tasks = app.tasks_for(env)
        if tasks and target.tasks_as == "release-phase":
            raise BadInput(f"{env.name}: with `tasks_as: release-phase` Heroku runs the image's own command as "
                           "the release phase and takes no other: set `tasks: []`, or run the tasks as "
                           "`tasks_as: one-off-dynos`")
        kinds = list(target.process_types) + (["release"] if target.tasks_as == "release-phase" else [])
        copied = kinds + ([target.task_process_type] if tasks else [])
        repository = {kind: f"{target.registry}/{target.app}/{kind}" for kind in copied}
        return {
            **release_values(TARGET_TYPE, app.app, env.name, artifact),
            "heroku": {"app": target.app, "api_url": target.api_url, "token_env": target.token_env,
                       "timeout": target.timeout, "poll_interval": target.poll_interval,
                       "tasks_as": target.tasks_as, "task_process_type": target.task_process_type,
                       "task_size": target.task_size},
            "process_types": kinds,
            "config_vars": dict(env.env),
            "secrets": list(env.secrets),  # names only: values are read from the environment at apply time
            "copies": [{"digest": artifact.digest, "tag": artifact.sha, "from": artifact.repository,
                        "to": {"repository": repository[kind], "insecure": target.registry_insecure,
                               "username": "_", "password_env": target.token_env}} for kind in copied],
            "tasks": [{"name": task.name, "command": list(task.command), "timeout": task.timeout}
                      for task in tasks],
        }

    def preflight(self, spec: dict[str, Any]) -> list[str]:
        app = self._api(spec).get(f"/apps/{spec['heroku']['app']}")
        missing = [name for name in spec["secrets"] if name not in os.environ]
        if missing:
            raise BadInput(f"secret env var(s) not set: {', '.join(missing)}")
        return [f"Heroku app {app['name']} answers at {spec['heroku']['api_url']}"]

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        """Run `task` in a one-off dyno of the spec's image, with the spec's config vars, before the
        formation changes; its output is streamed through report; a non-zero exit raises."""
        api, app = self._api(spec), spec["heroku"]["app"]
        api.say = lambda line: report("heroku", line)
        kind = spec["heroku"]["task_process_type"]
        self._give_task_type_the_image(api, spec, kind, report)
        one_off = OneOff(list(task["command"]), kind, float(task.get("timeout", 300)),
                         spec["heroku"].get("task_size"), self._wanted_config(spec))
        code, tail = run_one_off(api, app, one_off, lambda line: report("task", line),
                                 lambda line: report("dyno", line))
        if code != 0:
            raise TargetError(f"task {task['name']} exited with {code} (one-off dyno on {app})", logs=tail)

    def _give_task_type_the_image(self, api: Any, spec: dict[str, Any], kind: str, report: Reporter) -> None:
        """Release the spec's image as the task process type (quantity 0), unless it already has it: a
        one-off dyno runs the image of a process type, and this one serves nothing."""
        app = spec["heroku"]["app"]
        formation = self._formation_images(api, app)
        if formation.get(kind) == spec["digest"]:
            return
        api.call("PATCH", f"/apps/{app}/formation", docker=True,
                 body={"updates": [{"type": kind, "docker_image": spec["digest"], "quantity": 0}]})
        release = self._newest_release(api, app)
        report("formation", f"{app}: task process type {kind} set to {spec['digest']} (quantity 0; the serving "
                            f"types are unchanged); Heroku made release v{release['version']}")
        release, output = self._follow_release(api, spec, release, report)
        if release["status"] != "succeeded":
            raise TargetError(f"Heroku release v{release['version']} of {app} (the task image) {release['status']}",
                              output)

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
        wanted = self._wanted_config(spec)
        before = set(filter(None, current.get(MANAGED, "").split(",")))
        wanted[MANAGED] = ",".join(sorted(wanted))
        changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
        changes.update({k: None for k in before - set(wanted) if k in current})
        if not changes:
            return False
        api.call("PATCH", f"/apps/{app}/config-vars", body=changes)
        report("config", f"{app}: config vars set: {', '.join(sorted(changes))} (values not shown)")
        return True

    @staticmethod
    def _wanted_config(spec: dict[str, Any]) -> dict[str, str]:
        """The config vars the spec sets, secrets' values read by name now (never stored)."""
        return {**spec["config_vars"], **{name: os.environ.get(name, "") for name in spec["secrets"]}}

    @staticmethod
    def _formation_images(api: Any, app: str) -> dict[str, str | None]:
        """Each process type of the app's formation and the image digest it runs."""
        return {f["type"]: (f.get("docker_image") or {}).get("id") for f in api.get(f"/apps/{app}/formation")}

    @staticmethod
    def _newest_release(api: Any, app: str) -> dict[str, Any]:
        return api.get(f"/apps/{app}/releases", headers={"Range": "version ..; order=desc, max=1"})[0]

    def _update_formation(self, api: Any, spec: dict[str, Any], report: Reporter) -> dict[str, Any]:
        app = spec["heroku"]["app"]
        updates = [{"type": kind, "docker_image": spec["digest"]} for kind in spec["process_types"]]
        api.call("PATCH", f"/apps/{app}/formation", body={"updates": updates}, docker=True)
        newest = self._newest_release(api, app)
        report("formation", f"{app}: formation set to {spec['digest']} ({', '.join(spec['process_types'])}); "
                            f"Heroku made release v{newest['version']}")
        return newest

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
        formation = self._formation_images(api, heroku_app)
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
        """`conveyor run`: the command in a detached one-off dyno of the live release's image (the first
        serving process type's, once the formation is seen to give it that digest); returns its exit status."""
        if stdin or tty:
            raise BadInput("run -i/-t does not attach to a Heroku dyno (Heroku's rendezvous protocol is not "
                           "built): use `heroku run` for a console")
        api, app = self._api(spec), spec["heroku"]["app"]
        api.say = lambda line: report("heroku", line)
        kind = next(k for k in spec["process_types"] if k != "release")
        formation = self._formation_images(api, app)
        if formation.get(kind) != spec["digest"]:
            raise OperationFailed(f"{app}'s {kind} process type runs {formation.get(kind) or 'nothing'}, not the "
                                  f"live release's {spec['digest']}: see `conveyor status` (drift)")
        one_off = OneOff(list(command), kind, RUN_TIME_TO_LIVE, spec["heroku"].get("task_size"))
        code, _ = run_one_off(api, app, one_off, lambda line: report("output", line),
                              lambda line: report("dyno", line))
        return code

    def probe(self, spec: dict[str, Any]) -> str | None:
        """An outage is a serving dyno that crashed or is down; one starting is Heroku restarting it (every
        release restarts every dyno, the task image's too), and one-off dynos serve nothing."""
        api, app = self._api(spec), spec["heroku"]["app"]
        down = [f"{d['name']} {d['state']}" for d in api.get(f"/apps/{app}/dynos")
                if d["type"] in spec["process_types"] and d["state"] in OUTAGE_STATES]
        return f"{app}: {', '.join(down)}" if down else None

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        return self.deploy(spec, release_label, report)

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        """Scale the spec's process types to 0 and remove the config vars conveyor manages; the Heroku app
        itself (its add-ons, its other config vars, its releases) is Heroku's to delete."""
        if spec is None:
            raise BadInput(f"{app}/{env}: no stored spec says which Heroku app serves it")
        api, heroku_app = self._api(spec), spec["heroku"]["app"]
        api.say = lambda line: report("heroku", line)
        kinds = [k for k in spec["process_types"] if k != "release"]
        api.call("PATCH", f"/apps/{heroku_app}/formation",
                 body={"updates": [{"type": kind, "quantity": 0} for kind in kinds]})
        report("formation", f"{heroku_app}: {', '.join(kinds)} scaled to 0")
        current = api.get(f"/apps/{heroku_app}/config-vars")
        managed = [*filter(None, current.get(MANAGED, "").split(",")), MANAGED]
        removed = {name: None for name in managed if name in current}
        if removed:
            api.call("PATCH", f"/apps/{heroku_app}/config-vars", body=removed)
            report("config", f"{heroku_app}: config vars removed: {', '.join(sorted(removed))}")
        report("retire", f"the Heroku app {heroku_app} itself is left to delete on Heroku")

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
