"""What one command over an open SSH connection costs: the unit the ssh-hosts target's per-host overhead
is made of (every engine, file and lock step on a host is one such command).

One real host as the tests make them (tests/fleet.py: a network namespace with its own sshd), one
SSHRunner with its ControlMaster open; N commands, each timed for wall time and for the CPU of the ssh
client it starts (this process's children). Needs root (namespaces).

    .venv/bin/python bench/ssh_command_cost.py [--commands N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conveyor.targets.ssh_hosts.transport import HostAddress, SSHRunner  # noqa: E402
from devstack import free_port  # noqa: E402
from tests.fleet import Fleet, cleanup_leftovers  # noqa: E402


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args()
    cleanup_leftovers()
    fleet = Fleet.create(1, free_port())  # its registry relays listen there; nothing here pulls
    try:
        host = fleet.hosts[0]
        runner = SSHRunner(HostAddress.parse(host.ssh), fleet.known_hosts, identity=fleet.client_key)
        try:
            started = time.monotonic()
            runner.run(["true"])
            print(f"opening the connection: {(time.monotonic() - started) * 1000:.0f} ms")
            for label, argv in (("true", ["true"]),
                                ("a file read (sh -c cat)", ["sh", "-c", 'cat -- "$1"', "sh", "/etc/hostname"])):
                cpu, started = children_cpu(), time.monotonic()
                for _ in range(args.commands):
                    runner.run(argv)
                wall = (time.monotonic() - started) / args.commands * 1000
                client = (children_cpu() - cpu) / args.commands * 1000
                print(f"{label}: {wall:.1f} ms wall, {client:.1f} ms of ssh client CPU per command "
                      f"(mean of {args.commands})")
        finally:
            runner.close()
    finally:
        fleet.destroy()


if __name__ == "__main__":
    main()
