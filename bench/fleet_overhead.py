"""The ssh-hosts target's cost: per-host overhead of the SSH path over the local container host (target:
≤ 0.3 s per host, median, with connection reuse), and rollout time for 6 hosts at parallel 1, 2 and 3
(it should fall close to 1/parallel).

Real hosts as the tests make them (tests/fleet.py: network namespaces with their own sshd, podman
settings and HAProxy), the real registry, the real CLI. Per deploy, from the ledger: the deploy step's
time and the container's start + health wait (the target's `health` event); conveyor's own time is the
difference, so the app's start-up (the same image either way) cancels out. Local container-host deploys
and one-host fleet deploys are interleaved so machine load hits both alike. Rollouts run twice: with no
drain (conveyor's and the hosts' own work only), and with the default one-second drain. Every "host" is a
namespace of this machine, so the hosts' podman and sshd share its cores with conveyor: each rollout prints
how busy the cores were and how much of that was conveyor's own CPU. Needs root (namespaces).

    .venv/bin/python bench/fleet_overhead.py [--runs N] [--rollouts N]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import Registry, commit_sample_version, engine_environment, free_port, git, make_sample_repo  # noqa: E402
from tests.fleet import Fleet, cleanup_leftovers  # noqa: E402

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
# name: (hosts, parallel, port, drain_seconds). The drain-1 fleets keep the default drain (one second for
# requests to the previous container to finish), the wait a real host spends most of its deploy in.
FLEETS = {"one": (1, "1", 8081, 0), "six-p1": (6, "1", 8082, 0), "six-p2": (6, "2", 8083, 0),
          "six-p3": (6, "3", 8084, 0), "drain-p1": (6, "1", 8085, 1), "drain-p2": (6, "2", 8086, 1),
          "drain-p3": (6, "3", 8087, 1)}


def config(registry: str, local_port: int, fleet: Fleet) -> str:
    envs = [f"""  - name: local
    target: {{type: container-host, port: {local_port}, drain_seconds: 0}}
"""]
    for name, (count, parallel, port, drain) in FLEETS.items():
        hosts = ", ".join(host.ssh for host in fleet.hosts[:count])
        envs.append(f"""  - name: {name}
    target:
      type: ssh-hosts
      hosts: [{hosts}]
      known_hosts: {fleet.known_hosts}
      identity_env: FLEET_SSH_KEY
      port: {port}
      parallel: "{parallel}"
      drain_seconds: {drain}
      min_free_mb: 10
""")
    return f"app: hello\nimage: {registry}/hello\nregistry:\n  insecure: true\nenvironments:\n" + "".join(envs)


def deploy(repo: Path, env: str, sha: str) -> tuple[float, float]:
    """One deploy; (the deploy step's seconds, the longest container start + health wait of any host)."""
    from conveyor.ledger import open_ledger

    subprocess.run([CONVEYOR, "deploy", env, sha], cwd=repo, check=True, capture_output=True)
    ledger = open_ledger()
    try:
        release = ledger.list_releases("hello", env, limit=1)[0]
        if release.status != "succeeded" or not release.started_at or not release.finished_at:
            raise SystemExit(f"{env} deploy did not succeed: {release.status}")
        waits = [float(m.group(1)) for e in ledger.events(release_id=release.id, step="health")
                 if (m := re.search(r"healthy after ([0-9.]+)s", e.message))]
        return (release.finished_at - release.started_at).total_seconds(), max(waits or [0.0])
    finally:
        ledger.close()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs: the CLI, its ssh clients."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def share_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6, help="deploys per side for the per-host overhead")
    parser.add_argument("--rollouts", type=int, default=2, help="six-host rollouts per parallel setting")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cv-bench-fleet-"))
    registry = Registry(root / "registry").start()
    os.environ.update(engine_environment(root / "engine", [registry.host]))
    os.environ["CONVEYOR_HOME"] = str(root / "home")
    os.environ.pop("CONVEYOR_DATABASE_URL", None)
    cleanup_leftovers()
    fleet = Fleet.create(6, registry.port)
    os.environ["FLEET_SSH_KEY"] = fleet.client_key.read_text()
    try:
        values = {"REGISTRY": registry.host, "STAGING_PORT": "1", "PRODUCTION_PORT": "2"}
        repo = make_sample_repo(root / "hello", values)
        subprocess.run(["git", "init", "-q", "--bare", str(root / "remote.git")], check=True)
        git(repo, "remote", "add", "origin", str(root / "remote.git"))
        (repo / "conveyor.yml").write_text(config(registry.host, free_port(), fleet))
        git(repo, "commit", "-qam", "bench: a local environment and fleets")
        shas = [git(repo, "rev-parse", "HEAD"), commit_sample_version(repo, "v2")]
        for sha in shas:
            subprocess.run([CONVEYOR, "build", sha], cwd=repo, check=True, capture_output=True)
        for env in ("local", *FLEETS):  # warm: proxies started, images pulled on every host
            deploy(repo, env, shas[0])
            deploy(repo, env, shas[1])

        own: dict[str, list[float]] = {"local": [], "one": []}
        for index in range(args.runs):
            for env in own:
                step, wait = deploy(repo, env, shas[index % 2])
                own[env].append(step - wait)
                print(f"{env:5s} deploy {index + 1}: deploy step {step:5.2f}s, start+health {wait:5.2f}s, "
                      f"conveyor's own {step - wait:5.2f}s")
        local, remote = statistics.median(own["local"]), statistics.median(own["one"])
        print(f"per-host overhead of the SSH path: median {remote - local:+.2f}s "
              f"(conveyor's own time: one-host fleet {remote:.2f}s, local container host {local:.2f}s)")

        for name in ("six-p1", "six-p2", "six-p3", "drain-p1", "drain-p2", "drain-p3"):
            times, busy, own_cpu = [], [], []
            for index in range(args.rollouts):
                before, spent = cpu_ticks(), children_cpu()
                times.append(deploy(repo, name, shas[index % 2])[0])
                busy.append(share_busy(before, cpu_ticks()))
                own_cpu.append(children_cpu() - spent)
            # The six "hosts" are namespaces of this one machine: their podman, conmon and sshd share its
            # cores, so a rollout cannot run faster than those cores allow, however many hosts go at once.
            # conveyor's own CPU (the CLI and its ssh clients) is what a real fleet leaves on this machine.
            _, parallel, _, drain = FLEETS[name]
            print(f"rollout of 6 hosts at parallel {parallel}, drain {drain}s: median {statistics.median(times):.2f}s "
                  f"({', '.join(f'{t:.2f}s' for t in times)}); this machine's {os.cpu_count()} cores "
                  f"{statistics.median(busy):.0%} busy meanwhile, {statistics.median(own_cpu):.2f}s of it "
                  "conveyor's own CPU (CLI and ssh clients)")
    finally:
        fleet.destroy()
        ids = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
        from devstack import stop_proxy

        stop_proxy(root / "home")
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
