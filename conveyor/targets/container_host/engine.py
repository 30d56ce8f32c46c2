"""A small adapter over the podman / docker command line.

Only argument lists are passed (never a shell). Engine settings specific to a machine (ulimits, runtime,
cgroup manager, network mode, storage) are the engine's own configuration, read by the engine from its
config files or the environment; nothing here sets them. Secret values never appear in an argument list.
With podman each secret becomes a podman secret (`podman secret create NAME -`, which reads the value on
its stdin, so it crosses an SSH connection to a fleet host the same way) created right before the
container starts and removed with the container, passed as `--secret NAME,type=env,target=VAR`; podman 5.3
and later mask its value in `podman inspect` (older ones, Debian 12's 4.3 among them, still show it in
Config.Env). With docker (whose secrets need swarm) a secret is passed as `-e NAME`: docker reads the value
from this process's environment, and `docker inspect` shows it in the container's Config.Env; a remote
host does not have that environment, so a fleet refuses docker with secrets.

Every call goes through a Machine (this one, or a fleet host over SSH): its runner runs the argv, and a
registry login's auth file is written there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets as random_tokens
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import BadInput, InfrastructureMissing, TargetError
from conveyor.runner import CommandTimedOut, Completed, Runner
from conveyor.targets.container_host.machine import LocalMachine, Machine

ENGINES = ("podman", "docker")
# Short engine calls (inspect, ps, stop) should answer in well under a second; this bounds a hung engine.
CALL_TIMEOUT = 60.0
PULL_TIMEOUT = 900.0
# podman secrets conveyor creates are named conveyor.<unix time>.<random>; one older than this is left over
# from a run that crashed (a container reads its secrets when it starts, well within this) and is removed.
SECRET_PREFIX = "conveyor."
STALE_SECRET_AGE = 600.0
AUTH_FILE = "config.json"  # the name docker's --config DIR reads; podman's --authfile takes any path
SECRET_LABEL = "conveyor.container"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    status: str = ""  # created, running, exited, ...
    running: bool = False
    exit_code: int = 0
    image: str = ""


@dataclass(frozen=True)
class RegistryLogin:
    """How one pull logs in to the registry (host[:port]) its image is in; the password is never shown."""

    registry: str
    username: str
    password: str = field(repr=False)

    def auth_file(self) -> str:
        """The auth file's text, in the format podman's --authfile and docker's config.json share."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.registry: {"auth": token}}})


@contextlib.contextmanager
def auth_directory(login: RegistryLogin | None, machine: Machine | None = None) -> Iterator[str | None]:
    """A fresh directory (0700) on the machine holding the login's auth file (0600) while one pull runs."""
    if login is None:
        yield None
        return
    where = machine or LocalMachine()
    with where.private_dir() as directory:
        where.write_text(Path(directory) / AUTH_FILE, login.auth_file(), private=True)
        yield str(directory)


def summarise(stderr: str, limit: int = 400) -> str:
    """One readable line from an engine's stderr: its last `Error:` line, else its last non-empty line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:") or line.startswith("Error response")]
    text = (errors or lines or ["no error output"])[-1]
    text = re.sub(r"^Error( response from daemon)?:\s*", "", text)
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Engine:
    """One container engine CLI (podman or docker); every call goes through `runner` (argv in, result out)."""

    def __init__(self, name: str, binary: str, runner: Runner | None = None, *,
                 machine: Machine | None = None) -> None:
        self.name = name
        self.binary = binary
        self.machine: Machine = machine or LocalMachine(runner)
        self.runner: Runner = runner or self.machine.runner

    @classmethod
    def detect(cls, configured: str = "auto", runner: Runner | None = None, *,
               machine: Machine | None = None) -> Engine:
        """The configured engine, or for `auto` podman when installed, else a docker whose daemon answers."""
        if configured not in ("auto", *ENGINES):
            raise InfrastructureMissing(
                f"unknown container engine '{configured}' (use auto, podman or docker)"
            )
        where = machine or LocalMachine(runner)
        if configured in ("auto", "podman"):
            podman = where.which("podman")
            if podman:
                return cls("podman", podman, machine=where)
            if configured == "podman":
                raise InfrastructureMissing("podman is not installed (or not on PATH); install it or set "
                                            "target.engine")
        docker = where.which("docker")
        if docker:
            # The docker CLI alone is no engine: it is only usable when its daemon answers.
            problem = cls._docker_daemon_problem(docker, where.runner)
            if problem is None:
                return cls("docker", docker, machine=where)
            if configured == "docker":
                raise InfrastructureMissing(f"docker is installed but its daemon does not answer: {problem}")
        elif configured == "docker":
            raise InfrastructureMissing("docker is not installed (or not on PATH); install it or set "
                                        "target.engine")
        raise InfrastructureMissing(
            "no container engine found: install podman or docker, or set target.engine"
        )

    @staticmethod
    def _docker_daemon_problem(binary: str, runner: Runner) -> str | None:
        try:
            done = runner.run([binary, "info", "--format", "{{.ServerVersion}}"], timeout=15)
        except CommandTimedOut:
            return "docker info did not answer within 15s"
        if done.returncode != 0 or not done.stdout.strip():
            return summarise(done.stderr or done.stdout)
        return None

    # -- plumbing -----------------------------------------------------------------------------------

    def _call(self, args: Sequence[str], timeout: float = CALL_TIMEOUT, *, merge_stderr: bool = False) -> Completed:
        """The engine with these arguments, whatever its exit code; a hung engine is a TargetError."""
        try:
            return self.runner.run([self.binary, *args], timeout=timeout, merge_stderr=merge_stderr)
        except CommandTimedOut as exc:
            raise TargetError(f"{self.name} {args[0]} did not finish within {timeout:g}s") from exc

    def _run(self, args: Sequence[str], what: str, timeout: float = CALL_TIMEOUT, *,
             input: str | None = None) -> Completed:
        """The engine with these arguments, which must succeed; `input` goes to its stdin."""
        try:
            done = self.runner.run([self.binary, *args], timeout=timeout, input=input)
        except CommandTimedOut as exc:
            raise TargetError(f"{what}: {self.name} did not finish within {timeout:g}s") from exc
        if done.returncode != 0:
            raise TargetError(f"{what}: {summarise(done.stderr)}")
        return done

    # -- images -------------------------------------------------------------------------------------

    def image_present(self, image: str) -> bool:
        return self._call(["image", "inspect", "--format", "{{.Id}}", image]).ok

    def pull_args(self, image: str, login: RegistryLogin | None, auth_dir: str | None,
                  insecure: bool = False) -> list[str]:
        """The pull's argv: with a login, its auth file; `insecure` (podman) for a plain-HTTP registry the
        engine's own registries.conf does not list. Docker's daemon decides TLS itself (insecure-registries)."""
        if self.name == "docker":
            config = ["--config", auth_dir] if login is not None and auth_dir is not None else []
            return [self.binary, *config, "pull", "-q", image]
        auth = ["--authfile", os.path.join(auth_dir, AUTH_FILE)] if login is not None and auth_dir is not None else []
        return [self.binary, "pull", "-q", *auth, *(["--tls-verify=false"] if insecure else []), image]

    def pull(self, image: str, login: RegistryLogin | None = None, *, insecure: bool = False) -> None:
        try:
            with auth_directory(login, self.machine) as auth_dir:
                done = self.runner.run(self.pull_args(image, login, auth_dir, insecure), timeout=PULL_TIMEOUT)
        except CommandTimedOut as exc:
            raise TargetError(f"could not pull {image}: no answer within {PULL_TIMEOUT:g}s") from exc
        if done.returncode != 0:
            reason = summarise(done.stderr)
            # podman repeats the reference ("initializing source docker://IMAGE: ..."); it is already named.
            reason = re.sub(r"^initializing source \S+?:\s+", "", reason)
            raise TargetError(f"could not pull {image}: {reason}")

    def ensure_image(self, image: str, login: RegistryLogin | None = None, *, insecure: bool = False) -> bool:
        """Pull unless present; True when pulled. A digest reference is immutable: present means done."""
        if self.image_present(image):
            return False
        self.pull(image, login, insecure=insecure)
        return True

    # -- containers ---------------------------------------------------------------------------------

    def run_args(
        self,
        image: str,
        *,
        name: str,
        labels: Mapping[str, str],
        env: Mapping[str, str],
        secret_names: Sequence[str],
        init: bool,
        publish: int | None = None,
        command: Sequence[str] | None = None,
        detach: bool = True,
        stdin: bool = False,
        tty: bool = False,
        stored_secrets: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The argument list for `run` (without the binary). Secrets go by NAME only: as the engine secret
        `stored_secrets` names for them (see `secrets_for`), else as `-e NAME`. stdin/tty attach the caller's
        terminal (`conveyor run -i -t`)."""
        args = ["run", "-d" if detach else "--rm", "--name", name]
        args += ["-i"] * stdin + ["-t"] * tty
        if init:
            args.append("--init")
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if publish is not None:
            # Needed on a bridge network; with host networking the engine ignores it (ports are the host's).
            args += ["-p", f"127.0.0.1:{publish}:{publish}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        stored = stored_secrets or {}
        for secret in secret_names:
            if secret in stored:
                args += ["--secret", f"{stored[secret]},type=env,target={secret}"]
            else:
                args += ["-e", secret]
        args.append(image)
        args += list(command or [])
        return args

    def run_detached(
        self,
        image: str,
        *,
        name: str,
        labels: Mapping[str, str],
        env: Mapping[str, str],
        secret_names: Sequence[str],
        init: bool,
        publish: int | None = None,
    ) -> str:
        """Start a container in the background; returns its id."""
        with self.secrets_for(name, secret_names, outlive=True) as stored:
            args = self.run_args(image, name=name, labels=labels, env=env, secret_names=secret_names,
                                 init=init, publish=publish, detach=True, stored_secrets=stored)
            done = self._run(args, f"could not start a container from {image}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    # -- secrets ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def secrets_for(self, container: str, names: Sequence[str], *, outlive: bool) -> Iterator[dict[str, str]]:
        """podman: each secret env var as a podman secret labelled with its container, {VAR: secret name}.
        They are removed when the block fails, at its end unless `outlive` (a serving container: podman
        reads them again for `podman exec`), else with the container (`remove`). docker: {} (`-e NAME`)."""
        if self.name != "podman" or not names:
            self.check_secrets_reach(names)
            yield {}
            return
        self._remove_orphaned_secrets()
        created: dict[str, str] = {}
        try:
            for var in names:
                secret = f"{SECRET_PREFIX}{int(time.time())}.{random_tokens.token_hex(6)}"
                # "-": podman reads the value on stdin; it never appears in an argument list.
                self._run(["secret", "create", "--label", f"{SECRET_LABEL}={container}", secret, "-"],
                          f"could not hand secret {var} to podman", input=os.environ.get(var, ""))
                created[var] = secret
            yield created
        except BaseException:
            self._remove_secrets(list(created.values()))
            raise
        if not outlive:
            self._remove_secrets(list(created.values()))

    def check_secrets_reach(self, names: Sequence[str]) -> None:
        """docker's `-e NAME` reads a secret from the environment of the process that starts the container:
        a remote host does not have it, so docker with secrets is refused there before anything starts."""
        if names and self.name == "docker" and not self.machine.shares_environment:
            raise BadInput(f"host {self.machine.name}: docker would start the container without its secrets "
                           f"({', '.join(names)}): a remote host cannot see them; use podman there")

    def _conveyor_secrets(self) -> dict[str, str]:
        """{secret name: the container it was made for} of every podman secret conveyor created."""
        try:
            listed = self._call(["secret", "ls", "--format", "{{.Name}}"]).stdout.split()
            ours = [name for name in listed if name.startswith(SECRET_PREFIX)]
            if not ours:
                return {}
            template = f'{{{{.Spec.Name}}}} {{{{index .Spec.Labels "{SECRET_LABEL}"}}}}'
            done = self._call(["secret", "inspect", "--format", template, *ours])
        except (TargetError, InfrastructureMissing):
            return {}
        pairs = (line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
        return {secret: container for secret, container in pairs}

    def _remove_secrets(self, secrets: list[str]) -> None:
        if secrets:
            with contextlib.suppress(TargetError, InfrastructureMissing):
                self._call(["secret", "rm", *secrets])

    def _remove_orphaned_secrets(self) -> None:
        """Secrets whose container is gone, left by a run that crashed. A young one may belong to a container
        another run is starting right now, so only those older than STALE_SECRET_AGE go."""
        now = time.time()
        orphans = [
            secret for secret, container in self._conveyor_secrets().items()
            if _secret_age(secret, now) > STALE_SECRET_AGE and not self._container_exists(container)
        ]
        self._remove_secrets(orphans)

    def _container_exists(self, name: str) -> bool:
        return self._call(["container", "exists", name]).ok

    def inspect(self, ref: str) -> Container | None:
        found = self.inspect_many([ref])
        return found[0] if found else None

    def inspect_many(self, refs: Sequence[str]) -> list[Container]:
        if not refs:
            return []
        done = self._call(["container", "inspect", *refs])
        # With several refs and one gone, podman and docker still print the others and exit non-zero.
        try:
            data = json.loads(done.stdout or "[]")
        except json.JSONDecodeError:
            data = []
        if done.returncode != 0 and not data:
            if "no such" in done.stderr.lower():
                return []
            raise TargetError(f"could not inspect containers: {summarise(done.stderr)}")
        return [_container(item) for item in data or []]

    def logs(self, ref: str, tail: int = 20) -> list[str]:
        done = self._call(["logs", "--tail", str(tail), ref], merge_stderr=True)
        lines = done.stdout.splitlines()
        return lines[-tail:] if done.returncode == 0 else []

    def stop(self, ref: str, timeout: int) -> None:
        self._run(["stop", "-t", str(timeout), ref], f"could not stop container {ref}", timeout=timeout + 30)

    def remove(self, ref: str, *, name: str | None = None) -> None:
        """Kill and remove at once, with the podman secrets made for it; a container already gone is fine.
        `name`: the container's name when the caller knows it (podman's secrets are labelled with it)."""
        if name is None and self.name == "podman":
            doomed = self.inspect(ref)
            name = doomed.name if doomed is not None else None
        done = self._call(["rm", "-f", ref])
        if done.returncode != 0 and "no such" not in done.stderr.lower():
            raise TargetError(f"could not remove container {ref}: {summarise(done.stderr)}")
        if name is not None and self.name == "podman":
            self._remove_secrets([s for s, owner in self._conveyor_secrets().items() if owner == name])

    def list(self, labels: Mapping[str, str]) -> list[Container]:
        """Every container (running or not) carrying all these labels."""
        args = ["ps", "-a", "-q", "--no-trunc"]
        for key, value in labels.items():
            args += ["--filter", f"label={key}={value}"]
        done = self._run(args, "could not list containers")
        return self.inspect_many(done.stdout.split())


def _secret_age(secret: str, now: float) -> float:
    """Seconds since conveyor created the podman secret `secret`; 0 for a secret that is not conveyor's."""
    parts = secret.split(".")
    if len(parts) != 3 or f"{parts[0]}." != SECRET_PREFIX or not parts[1].isdigit():
        return 0.0
    return now - int(parts[1])


def _container(item: dict[str, object]) -> Container:
    config = item.get("Config") or {}
    state = item.get("State") or {}
    assert isinstance(config, dict) and isinstance(state, dict)
    name = str(item.get("Name") or "").lstrip("/")  # docker prefixes names with "/"
    image = str(item.get("ImageName") or config.get("Image") or "")
    return Container(
        id=str(item.get("Id") or ""),
        name=name,
        labels=dict(config.get("Labels") or {}),
        status=str(state.get("Status") or ""),
        running=bool(state.get("Running")),
        exit_code=int(state.get("ExitCode") or 0),
        image=image,
    )
