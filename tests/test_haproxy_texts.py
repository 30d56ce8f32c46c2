"""HAProxy's config as conveyor renders it, and HAProxy's runtime-API answers as conveyor reads them: pure
functions, checked on texts HAProxy 2.6 (Debian 12) printed, without a running HAProxy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conveyor.errors import TargetError
from conveyor.targets.container_host.proxy import Slot, parse_processes, parse_servers_state, render_config

# `show proc` on the master CLI right after a start, then after a reload that left an old worker.
SHOW_PROC = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "29567           master          1 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "29587           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
SHOW_PROC_RELOADED = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "29567           master          3 [failed: 1]   0d00h02m11s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "29701           worker          0               0d00h00m04s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "29587           worker          2               0d00h02m10s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
# `@1 show servers state hello.staging`: blue serves 127.0.0.1:1234, green is in maintenance (admin state 5).
SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
    "2 hello.staging 1 blue 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 1234 - 0 0 - - 0\n"
    "2 hello.staging 2 green 127.0.0.1 0 5 1 1 0 1 0 0 8 0 0 0 - 1 - 0 0 - - 0"
)


def test_show_proc_gives_the_reloads_and_the_workers() -> None:
    started = parse_processes(SHOW_PROC)
    assert (started.reloads, started.failed, started.workers, started.old_workers) == (1, 0, [29587], [])
    reloaded = parse_processes(SHOW_PROC_RELOADED)
    assert (reloaded.reloads, reloaded.failed) == (3, 1)
    assert reloaded.workers == [29701] and reloaded.old_workers == [29587]


def test_servers_state_gives_each_slot_and_whether_it_is_in_service() -> None:
    assert parse_servers_state("hello.staging", SERVERS_STATE) == [
        Slot("blue", "127.0.0.1:1234", in_service=True),
        Slot("green", "127.0.0.1:1", in_service=False),
    ]
    assert parse_servers_state("hello.production", SERVERS_STATE) == []  # another proxy's rows are not ours


def test_servers_state_of_an_unknown_proxy_is_none_and_nonsense_is_an_error() -> None:
    assert parse_servers_state("nope.x", "Can't find backend.") is None
    with pytest.raises(TargetError, match="haproxy answered 'show servers state hello.staging' with: Unknown"):
        parse_servers_state("hello.staging", "Unknown command. Please enter one of the following commands only")


def test_rendered_config_has_one_listener_per_site_and_haproxy_accepts_it(tmp_path: Path) -> None:
    sites = {
        "hello.staging": {"bind": "127.0.0.1", "port": 8001, "upstream": "127.0.0.1:40001"},
        "hello.production": {"bind": "::1", "port": 8002, "upstream": "127.0.0.1:40002"},
    }
    text = render_config(sites, pid_file=tmp_path / "haproxy.pid", stats_socket=tmp_path / "haproxy.sock")
    assert text.count("\nlisten ") == 2
    staging = text[text.index("listen hello.staging"):]
    assert "    bind 127.0.0.1:8001\n" in staging
    assert "    server blue 127.0.0.1:40001\n    server green 127.0.0.1:1 backup disabled\n" in staging
    assert "    bind [::1]:8002" in text
    assert f"pidfile '{tmp_path / 'haproxy.pid'}'" in text
    binary = shutil.which("haproxy")
    assert binary is not None, "haproxy is installed by scripts/setup.sh"
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
