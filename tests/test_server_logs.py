"""Server logs (issue 16, point 4): one JSON object per line for every request (with its request id, echoed
in `x-request-id`) and every step of an operation (with the operation id and, tracing on, the trace id);
no token ever appears in the log (headers are never logged; step messages are the redacted ones).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.e2e import App
from tests.fakes.otlp import OtlpReceiver
from tests.server import ServerProcess


def json_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_requests_and_steps_are_json_lines_with_ids_and_no_token(app: App, tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    server = ServerProcess.start(app, **receiver.env())
    try:
        server.add_app()
        admin = server.token("admin", "admin")
        request = urllib.request.Request(server.url + "/api/apps", headers={
            "Authorization": f"Bearer {admin}", "X-Request-ID": "req-from-the-caller.1"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["x-request-id"] == "req-from-the-caller.1"
        with urllib.request.urlopen(urllib.request.Request(server.url + "/api/health"), timeout=30) as response:
            generated = response.headers["x-request-id"]
        deployed = server.cli_ok("deploy", "staging", "v2", "--json").json()
        server.cli_ok("history", "--json")
    finally:
        server.stop()
        receiver.close()
    text = server.log.read_text()
    lines = json_lines(server.log)
    requests = [line for line in lines if line["msg"] == "request"]
    assert {"request_id": "req-from-the-caller.1", "path": "/api/apps", "status": 200}.items() <= \
        next(line for line in requests if line["request_id"] == "req-from-the-caller.1").items()
    assert len(generated) == 32 and any(line["request_id"] == generated for line in requests)
    assert all({"ts", "level", "method", "path", "status", "duration_ms", "request_id"} <= set(line)
               for line in requests)
    steps = [line for line in lines if line["msg"] == "step"]
    assert steps and all(line["operation_id"] == steps[0]["operation_id"] for line in steps)
    assert {line["step"] for line in steps} >= {"note", "task", "switch"}
    trace_id = deployed["trace_id"]
    assert trace_id and all(line["trace_id"] == trace_id for line in steps)
    (finished,) = [line for line in lines if line["msg"] == "operation finished"]
    assert (finished["state"], finished["trace_id"]) == ("succeeded", trace_id)
    follow = [line for line in requests if line.get("operation_id") == str(steps[0]["operation_id"])]
    assert follow and all(line["route"].startswith("/api/operations/{operation_id}") for line in follow)
    # No token made (the CLI's, the admin's) appears anywhere in the log, nor any Authorization header.
    assert server.tokens and all(token not in text for token in server.tokens.values())
    assert "Bearer" not in text and "authorization" not in text.lower()
