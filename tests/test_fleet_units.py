"""The ssh-hosts target's pure parts: its settings, host addresses, batches, the ssh command line."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from conveyor.config.loader import parse_config
from conveyor.errors import BadInput
from conveyor.targets.ssh_hosts.target import _batches
from conveyor.targets.ssh_hosts.transport import HostAddress, SSHRunner


def fleet_yaml(hosts: str = "[deploy@10.0.0.1, 10.0.0.2:2222]", parallel: str = "1") -> str:
    return f"""app: hello
image: 127.0.0.1:5000/hello
environments:
  - name: production
    target:
      type: ssh-hosts
      hosts: {hosts}
      known_hosts: ops/known_hosts
      port: 8080
      parallel: {parallel}
"""


def test_an_ssh_hosts_config_parses_with_its_container_host_settings() -> None:
    target = parse_config(fleet_yaml(parallel="50%")).environment("production").target
    assert target.type == "ssh-hosts"
    assert target.hosts == ["deploy@10.0.0.1", "10.0.0.2:2222"]
    assert (target.parallel, target.bind, target.engine, target.init) == ("50%", "0.0.0.0", "auto", True)


@pytest.mark.parametrize("hosts, parallel, expected", [
    ("[deploy@@10.0.0.1]", "1", "is not user@host:port"),
    ("[10.0.0.1:99999]", "1", "is not user@host:port"),
    ("[10.0.0.1, 10.0.0.1]", "1", "a host is listed twice"),
    ("[]", "1", "hosts"),
    ("[10.0.0.1]", "0", "expected a number of hosts"),
    ("[10.0.0.1]", "150%", "expected a number of hosts"),
])
def test_bad_fleet_settings_are_bad_input_naming_the_key(hosts: str, parallel: str, expected: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_config(fleet_yaml(hosts, parallel), "conveyor.yml")
    assert caught.value.exit_code == 2
    assert expected in caught.value.message


@pytest.mark.parametrize("text, host, port, user", [
    ("10.0.0.1", "10.0.0.1", 22, None),
    ("deploy@web-1.example.com:2222", "web-1.example.com", 2222, "deploy"),
    ("root@[::1]:2200", "::1", 2200, "root"),
    ("[fd00::5]", "fd00::5", 22, None),
])
def test_host_addresses_parse(text: str, host: str, port: int, user: str | None) -> None:
    assert HostAddress.parse(text) == HostAddress(text, host, port, user)


@pytest.mark.parametrize("parallel, sizes", [
    ("1", [1, 1, 1, 1, 1, 1]), ("2", [2, 2, 2]), ("4", [4, 2]), ("10", [6]),
    ("50%", [3, 3]), ("100%", [6]), ("10%", [1, 1, 1, 1, 1, 1]), ("34%", [3, 3]),
])
def test_hosts_go_in_batches_of_parallel(parallel: str, sizes: list[int]) -> None:
    hosts = [f"h{i}" for i in range(6)]
    batches = _batches(hosts, parallel)
    assert [len(batch) for batch in batches] == sizes
    assert [host for batch in batches for host in batch] == hosts  # in the listed order, each once


def test_the_ssh_command_verifies_host_keys_against_the_file_only_and_quotes_every_argument(tmp_path: Path) -> None:
    runner = SSHRunner(HostAddress.parse("deploy@10.0.0.1:2222"), tmp_path / "known_hosts", connect_timeout=3)
    try:
        argv = ["printf", "%s\n", "a b", "it's", "$HOME", "; rm -rf /"]
        command = runner.command(argv)
        assert command[:2] == ["ssh", "-T"]
        assert f"-oUserKnownHostsFile={tmp_path / 'known_hosts'}" in command
        assert "-oStrictHostKeyChecking=yes" in command and "-oGlobalKnownHostsFile=/dev/null" in command
        assert "-oBatchMode=yes" in command and "-oControlMaster=auto" in command
        assert "-oConnectTimeout=3" in command
        assert command[command.index("-l") + 1] == "deploy" and command[command.index("-p") + 1] == "2222"
        assert command[-3:-1] == ["--", "10.0.0.1"]
        assert shlex.split(command[-1]) == argv  # the remote shell gets back exactly the argv
    finally:
        runner.close()


def test_a_silent_host_times_out_as_unreachable(tmp_path: Path) -> None:
    """A host whose TCP port accepts but whose sshd never speaks: ConnectTimeout bounds the wait."""
    import socket

    from conveyor.targets.ssh_hosts.transport import HostUnreachable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        address = HostAddress.parse(f"root@127.0.0.1:{silent.getsockname()[1]}")
        runner = SSHRunner(address, tmp_path / "known_hosts", connect_timeout=1)
        try:
            with pytest.raises(HostUnreachable) as caught:
                runner.run(["true"], timeout=30)
        finally:
            runner.close()
    assert caught.value.exit_code == 2
    assert f"host {address.text} does not answer over ssh" in caught.value.message
    assert "timed out" in caught.value.message


def test_the_old_host_agent_setting_is_refused_and_state_dir_defaults_to_the_login_home() -> None:
    """Nothing of conveyor runs on a host any more: a config still naming the agent is told so (exit 2)."""
    with pytest.raises(BadInput) as caught:
        parse_config(fleet_yaml() + "      agent: conveyor-host-agent\n", "conveyor.yml")
    assert caught.value.exit_code == 2 and "agent" in caught.value.message
    assert parse_config(fleet_yaml()).environment("production").target.state_dir == ".conveyor"
    with pytest.raises(BadInput) as caught:
        parse_config(fleet_yaml() + "      state_dir: 'my dir'\n", "conveyor.yml")
    assert "state_dir" in caught.value.message


def test_docker_with_secrets_is_refused_on_a_remote_host_and_podman_is_not() -> None:
    """docker's `-e NAME` reads the value from the environment of the process starting the container, which
    a fleet host does not share: refused (exit 2) before a container starts; podman takes them on stdin."""
    from conveyor.runner import RecordingRunner
    from conveyor.targets.container_host.engine import Engine
    from conveyor.targets.container_host.machine import LocalMachine

    class RemoteHost(LocalMachine):
        name = "deploy@10.0.0.1"
        shares_environment = False

    runner = RecordingRunner()
    docker = Engine("docker", "/usr/bin/docker", machine=RemoteHost(runner))
    with pytest.raises(BadInput) as caught:
        docker.check_secrets_reach(["TOKEN"])
    assert caught.value.exit_code == 2 and "host deploy@10.0.0.1: docker" in caught.value.message
    with pytest.raises(BadInput), docker.secrets_for("c1", ["TOKEN"], outlive=False):
        pass
    docker.check_secrets_reach([])  # no secrets: docker is fine there
    Engine("podman", "/usr/bin/podman", machine=RemoteHost(runner)).check_secrets_reach(["TOKEN"])
    Engine("docker", "/usr/bin/docker", machine=LocalMachine(runner)).check_secrets_reach(["TOKEN"])  # local
    assert runner.calls == []  # nothing was started to find out
