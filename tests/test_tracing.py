"""Traces (issue 16, point 2): each operation one OpenTelemetry trace, each step a span, exported over
OTLP/HTTP to the in-repo receiver (tests/fakes/otlp.py decodes the protobuf with opentelemetry-proto); the
trace id on the release, in `history --json`, the API's views and the announcements; an API submission
joins the caller's trace (W3C traceparent); and with tracing off, no OpenTelemetry module is imported.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import App
from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.server import ServerProcess

# Runs conveyor's CLI in this interpreter and, at exit, writes the modules it loaded to a file.
MODULES_AT_EXIT = """
import atexit, json, sys
path = sys.argv[1]
def _dump():
    with open(path, "w") as out:
        json.dump(sorted(sys.modules), out)
atexit.register(_dump)
sys.argv = ["conveyor", *sys.argv[2:]]
from conveyor.cli.main import main
main()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


def modules_loaded(app: App, tmp_path: Path, *args: str, **env: str) -> list[str]:
    dump = tmp_path / f"modules-{secrets.token_hex(4)}.json"
    environment = {**{k: v for k, v in app.env().items() if not k.startswith("OTEL_")}, **env}
    proc = subprocess.run([sys.executable, "-c", MODULES_AT_EXIT, str(dump), *args], cwd=app.repo,
                          env=environment, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(dump.read_text())


def test_help_and_a_deploy_with_tracing_off_import_no_opentelemetry(app: App, tmp_path: Path) -> None:
    for args in (["--help"], ["deploy", "staging", "v1"]):
        loaded = modules_loaded(app, tmp_path, *args)
        assert "conveyor.cli.main" in loaded
        assert [m for m in loaded if m.startswith("opentelemetry")] == [], args
        assert "prometheus_client" not in loaded, args
    assert app.history("staging")[0]["trace_id"] is None  # nothing to show when tracing was off
    # The same check can fail: with an endpoint set, the SDK is loaded.
    traced = modules_loaded(app, tmp_path, "deploy", "staging", "v2", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert "opentelemetry.sdk.trace" in traced


def tree(spans: list[ReceivedSpan]) -> dict[str, list[str]]:
    """Each span's name → its children's names, in start order."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str, list[str]] = {span.name: [] for span in spans}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_span_id)
        if parent is not None:
            children[parent.name].append(span.name)
    return children


def test_a_cli_deploy_is_one_trace_with_a_span_per_step_and_its_id_on_the_release(
        app: App, receiver: OtlpReceiver) -> None:
    app.ok("deploy", "staging", "v1", **receiver.env())
    app.ok("deploy", "staging", "v2", **receiver.env())  # v2 has a pre-deploy task
    release = app.history("staging")[0]
    assert release["number"] == 2 and len(release["trace_id"] or "") == 32
    spans = receiver.trace(release["trace_id"])  # flushed at exit: already here
    (root,) = [span for span in spans if not span.parent_span_id]
    assert root.name == "deploy staging" and root.service == "conveyor" and root.status == "UNSET"
    assert root.attributes["conveyor.app"] == "hello" and root.attributes["conveyor.env"] == "staging"
    assert root.attributes["conveyor.sha"] == app.git("rev-parse", "v2")
    assert root.attributes["conveyor.digest"] == release["digest"]
    assert root.attributes["conveyor.target"] == "container-host"
    assert (root.attributes["conveyor.outcome"], root.attributes["conveyor.release.number"]) == ("succeeded", 2)
    assert tree(spans)["deploy staging"] == ["lease", "task:migrate", "deploy"]
    deploy = next(span for span in spans if span.name == "deploy")
    assert deploy.attributes["conveyor.outcome"] == "ok" and deploy.attributes["conveyor.release.number"] == 2
    assert all(span.end_ns >= span.start_ns for span in spans)
    assert len({span.trace_id for span in receiver.spans}) == 2  # one trace per operation
    assert "application/x-protobuf" in receiver.content_types[0]

    failed = app.run("deploy", "staging", "broken", **receiver.env())
    assert failed.code == 1
    broken = app.history("staging")[0]
    spans = receiver.trace(broken["trace_id"])
    root = next(span for span in spans if not span.parent_span_id)
    assert root.status == "ERROR" and root.attributes["conveyor.outcome"] == "failed"
    deploy = next(span for span in spans if span.name == "deploy")
    assert deploy.status == "ERROR" and "health" in deploy.attributes["error.message"]


def api_post(server: ServerProcess, path: str, body: dict[str, object], headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {server.token('admin', 'admin')}", **headers})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_an_api_submission_joins_the_callers_trace(app: App, receiver: OtlpReceiver, tmp_path: Path) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    server = ServerProcess.start(app, **receiver.env())
    try:
        server.add_app()
        submitted = api_post(server, "/api/apps/hello/deploy", {"env": "staging", "ref": "v2"},
                             {"traceparent": f"00-{caller_trace}-{caller_span}-01"})
        server.wait_for_state(int(submitted["id"]), "succeeded")  # type: ignore[arg-type]
        untraced = api_post(server, "/api/apps/hello/deploy", {"env": "staging", "ref": "v1"},
                            {"traceparent": "not-a-traceparent"})
        server.wait_for_state(int(untraced["id"]), "succeeded")  # type: ignore[arg-type]
        status, history = server.api("GET", "/api/apps/hello/history?env=staging")
        assert status == 200
    finally:
        server.stop()
    first, second = history["releases"][1], history["releases"][0]
    assert first["trace_id"] == caller_trace
    assert second["trace_id"] not in (None, caller_trace)  # an invalid traceparent starts a trace of its own
    spans = receiver.wait_for(lambda got: [s for s in got if s.trace_id == caller_trace and s.name == "deploy"]
                              and [s for s in got if s.trace_id == caller_trace])
    spans = receiver.trace(caller_trace)
    (operation,) = [span for span in spans if span.name == "operation deploy"]
    assert operation.parent_span_id == caller_span  # a child of the caller's span
    assert operation.attributes["conveyor.operation.id"] == submitted["id"]
    assert operation.attributes["conveyor.outcome"] == "succeeded"
    children = tree(spans)
    assert children["operation deploy"] == ["deploy staging"]
    assert children["deploy staging"] == ["lease", "task:migrate", "deploy"]


def test_the_trace_id_is_in_the_announcements(app: App, tmp_path: Path, receiver: OtlpReceiver) -> None:
    from tests.notify_setup import announced, check_schema

    setup = announced(app, tmp_path)
    config = setup.config
    config.write_text(config.read_text().replace(
        '  release_page: "https://conveyor.example.com/{app}/{env}/{number}"\n',
        '  release_page: "https://conveyor.example.com/{app}/{env}/{number}"\n'
        '  trace_page: "https://grafana.example.com/explore?traceId={trace_id}"\n'))
    try:
        setup.ok("deploy", "staging", "v1", **receiver.env())
        trace_id = app.history("staging")[0]["trace_id"]
        payloads = setup.hooks.payloads()
        check_schema(payloads)
        final = payloads[-1]["release"]
        assert final["trace_id"] == trace_id
        assert final["links"]["trace"] == f"https://grafana.example.com/explore?traceId={trace_id}"
        assert f"https://grafana.example.com/explore?traceId={trace_id}|trace>" in setup.texts()[-1]
    finally:
        setup.slack.close()
        setup.hooks.close()
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None  # the tests' own process traces nothing
