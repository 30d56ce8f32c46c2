"""The README's demo: the sample app from commit to staging to production and back, on this machine.

It starts a local OCI registry (the stand-in for the registry a team already has), points podman and
buildah at this sandbox's engine settings (see devstack), makes a git repo of examples/hello, and then
runs only `conveyor` commands, exactly as a person or CI would.

    scripts/demo.sh           run the demo (state in .demo/)
    scripts/demo.sh --server  the same job through a `conveyor server` the demo starts: every command is
                              sent to its API (CONVEYOR_SERVER, CONVEYOR_TOKEN) and the CLI follows it;
                              a server is left running afterwards with its dashboard open to a read token
    scripts/demo.sh down      stop the app containers, the proxy and the registry it left running
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fakes.slack import FakeSlack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import (  # noqa: E402
    Registry,
    commit_sample_version,
    engine_environment,
    free_port,
    git,
    make_sample_repo,
    stop_proxy,
)

STATE = ROOT / ".demo"
CONVEYOR = str(ROOT / ".venv" / "bin" / "conveyor")


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


CLIENT_ENV: dict[str, str] = {}  # CONVEYOR_SERVER and CONVEYOR_TOKEN in --server mode


def conveyor(*args: str, cwd: Path) -> str:
    shown = " ".join(f"{k}=… " for k in CLIENT_ENV) if CLIENT_ENV else ""
    print(f"\n$ {shown}conveyor {' '.join(args)}", flush=True)
    result = subprocess.run([CONVEYOR, *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, **CLIENT_ENV})
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        sys.exit(f"demo: `conveyor {' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def down() -> None:
    settings = json.loads((STATE / "demo.json").read_text()) if (STATE / "demo.json").exists() else {}
    os.environ.update(settings.get("engine_env", {}))
    ids = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello"], capture_output=True,
                         text=True).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
    stop_proxy(STATE / "home")
    for name in ("registry.pid", "server.pid"):
        pid_file = STATE / name
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
    print("demo: stopped")


def run_server(bind: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    """`conveyor server` in the background, once it says where it listens: (the process, its URL)."""
    with log.open("w") as out:
        server = subprocess.Popen([CONVEYOR, "server", "--bind", bind], stderr=out, text=True,
                                  start_new_session=True)  # outlives the demo when it is left running
    (STATE / "server.pid").write_text(str(server.pid))
    line = ""
    with log.open() as lines:  # its first plain line says where it listens, once it does
        while "listening on " not in line and server.poll() is None:
            line = lines.readline() or (time.sleep(0.05) or "")
    if "listening on " not in line:
        sys.exit(f"demo: conveyor server did not start: {log.read_text()}")
    print(line, end="")
    return server, line.split("listening on ", 1)[1].split()[0]


def create_token(name: str, scope: str) -> str:
    print(f"$ conveyor server token create {name} --scope {scope}", flush=True)
    return subprocess.run([CONVEYOR, "server", "token", "create", name, "--scope", scope], text=True,
                          capture_output=True, check=True).stdout.strip()


def start_server(app: Path) -> subprocess.Popen[str]:
    """`conveyor server` on a free port with its own state, an admin token, and the app registered by its
    git remote; from here on every conveyor command of the demo goes through its API."""
    print("\n$ conveyor server --bind 127.0.0.1:0 &", flush=True)
    server, url = run_server("127.0.0.1:0", STATE / "server.log")
    CLIENT_ENV.update({"CONVEYOR_SERVER": url, "CONVEYOR_TOKEN": create_token("demo", "admin")})
    conveyor("apps", "add", "hello", "--repo", str(STATE / "remote.git"), cwd=app)
    return server


def leave_dashboard_running() -> None:
    """A server left running on the demo's ledger, and a read token for its dashboard in a file only this
    user can read (a token is a password: it is not printed)."""
    print("\n$ conveyor server --bind 127.0.0.1:0 &   # left running: the dashboard", flush=True)
    _, url = run_server("127.0.0.1:0", STATE / "dashboard.log")
    token_file = STATE / "dashboard-token"
    token_file.touch(mode=0o600)
    token_file.write_text(create_token("newcomer", "read") + "\n")
    CLIENT_ENV["CONVEYOR_SERVER"] = url
    print(f"\ndashboard  {url}/  (sign in with the token in {token_file.relative_to(ROOT)})")
    print("watch a deploy live there while you run, in another shell:")
    print(f"  CONVEYOR_SERVER={url} CONVEYOR_TOKEN=$(cat {STATE.relative_to(ROOT)}/admin-token) \\\n"
          f"    .venv/bin/conveyor --app hello deploy staging main --reason 'watching it live'")


def announce_to_demo_slack(app: Path) -> FakeSlack:
    """The in-repo Slack Web API server (tests/fakes/slack.py) prints each message as it is posted and
    updated; the app's conveyor.yml gets a `notify:` pointed at it (every event, so each release's message
    is posted when it starts and updated when it ends)."""
    from tests.fakes.slack import FakeSlack

    os.environ["DEMO_SLACK_TOKEN"] = "xoxb-demo-token"
    slack = FakeSlack("xoxb-demo-token", {"#dev": "C0DEV"}, {}, echo=True)
    config = app / "conveyor.yml"
    config.write_text(config.read_text() + (
        "notify:\n"
        f'  - slack: {{channel: "#dev", token_env: DEMO_SLACK_TOKEN, api_url: "{slack.api_url}"}}\n'
        "    events: [started, succeeded, failed, rolled_back, interrupted, blocked, unblocked, freeze]\n"
    ))
    git(app, "commit", "-qam", "announce deploys in #dev")
    return slack


def main() -> None:
    if sys.argv[1:] == ["down"]:
        down()
        return
    if (STATE / "demo.json").exists():
        down()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    registry = Registry(STATE / "registry", port=port_or_free(5000)).start()
    (STATE / "registry.pid").write_text(str(registry.process.pid if registry.process else ""))
    engine_env = engine_environment(STATE / "engine", [registry.host])
    os.environ.update(engine_env)
    os.environ["CONVEYOR_HOME"] = str(STATE / "home")
    os.environ.pop("CONVEYOR_DATABASE_URL", None)
    ports = {
        "REGISTRY": registry.host,
        "STAGING_PORT": str(port_or_free(8001)),
        "PRODUCTION_PORT": str(port_or_free(8002)),
    }
    (STATE / "demo.json").write_text(json.dumps({"engine_env": engine_env}))
    app = make_sample_repo(STATE / "hello", ports, version="v1")
    slack = announce_to_demo_slack(app)
    # The app's git remote: conveyor pushes its release tags and the staging/production branches here.
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(STATE / "remote.git")], check=True)
    git(app, "remote", "add", "origin", str(STATE / "remote.git"))
    git(app, "push", "-q", "origin", "main")
    staging = f"http://127.0.0.1:{ports['STAGING_PORT']}/"
    production = f"http://127.0.0.1:{ports['PRODUCTION_PORT']}/"

    through_server = "--server" in sys.argv[1:]
    server = start_server(app) if through_server else None

    v1 = git(app, "rev-parse", "HEAD")
    conveyor("build", cwd=app)
    conveyor("deploy", "staging", v1, "--reason", "first release", cwd=app)
    conveyor("promote", "staging", "production", "--only", v1, cwd=app)
    v2 = commit_sample_version(app, "v2")
    if through_server:
        print("\n$ git push origin main   # the server ships what the team's remote has", flush=True)
        git(app, "push", "-q", "origin", "main")
    conveyor("build", cwd=app)
    conveyor("deploy", "staging", v2, "--reason", "v2", cwd=app)
    conveyor("diff", cwd=app)
    conveyor("promote", "staging", "production", "--only", v2, cwd=app)
    conveyor("rollback", "production", "--reason", "demo: back to v1", cwd=app)
    conveyor("history", cwd=app)
    conveyor("status", cwd=app)
    if server is None:
        conveyor("audit", "verify", cwd=app)
    else:
        conveyor("operations", cwd=app)
        print("\n$ kill -TERM <server>   # drains: nothing new starts, what runs finishes", flush=True)
        server.terminate()
        server.wait(timeout=60)
        print("".join((STATE / "server.log").read_text().splitlines(True)[1:]), end="")
        admin_file = STATE / "admin-token"
        admin_file.touch(mode=0o600)
        admin_file.write_text(CLIENT_ENV["CONVEYOR_TOKEN"] + "\n")
    print("\n$ git ls-remote origin   # the refs conveyor pushed")
    print(git(app, "ls-remote", "origin"))

    time.sleep(0.2)
    staging_page, production_page = fetch(staging), fetch(production)
    print(f"\nstaging    {staging}  serves {'v2' if '>v2<' in staging_page else 'UNEXPECTED'}")
    print(f"production {production}  serves {'v1' if '>v1<' in production_page else 'UNEXPECTED'}")
    slack.close()
    if ">v2<" not in staging_page or ">v1<" not in production_page:
        registry.stop()
        sys.exit("demo: an environment does not serve the version it should")
    if through_server:
        leave_dashboard_running()  # the registry stays up too, so a deploy from the dashboard can pull
        print("\ndemo: done. `scripts/demo.sh down` stops the app, the proxy, the registry and the server.")
        return
    registry.stop()
    print("\ndemo: done. `scripts/demo.sh down` stops the app and the proxy.")


if __name__ == "__main__":
    main()
