"""What tracing costs an operation (targets: on ≤ +5 ms, off nothing measurable).

Real deploys of the sample app (registry, podman, HAProxy, SQLite, git all real), run in this one process
through the pipeline (pipeline/operations.py: deploy), alternating v1 and v2: first with tracing off (no
OTEL_* variable: nothing imported), then on, exporting over OTLP/HTTP to the in-repo receiver
(tests/fakes/otlp.py). Per deploy, conveyor's own time is the wall time minus the container's start and
health wait the target recorded; the medians are compared. A deploy's noise (tens of ms) is far above the
target, so the spans' own cost is also timed alone: the same spans an operation makes (the operation, the
lease, a task, the deploy step), thousands of times, off and on.

    .venv/bin/python bench/tracing_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

from sample_app import sample_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_deploy(repo: Path, sha: str) -> float:
    """conveyor's own seconds in one deploy (wall time minus the container's start and health wait)."""
    from conveyor.pipeline.events import EventSink
    from conveyor.pipeline.operations import deploy
    from conveyor.pipeline.workspace import Workspace

    quiet: EventSink = lambda event: None  # noqa: E731
    ws = Workspace(repo, sink=quiet)
    try:
        started = time.perf_counter()
        release = deploy(ws, "staging", sha)
        total = time.perf_counter() - started
        health = ws.ledger.events(release_id=release.id, step="health")  # type: ignore[union-attr]
    finally:
        ws.close()
    match = re.search(r"healthy after ([0-9.]+)s", health[-1].message) if health else None
    if match is None:
        raise SystemExit("a deploy did not report its health wait")
    return total - float(match.group(1))


def spans_alone(count: int) -> float:
    """Median microseconds of one operation's spans, as pipeline/release.py opens them."""
    from conveyor import tracing

    times = []
    for _ in range(count):
        started = time.perf_counter()
        with tracing.operation("deploy staging", app="hello", env="staging", kind="deploy", sha="a" * 40,
                               digest="sha256:" + "b" * 64, target="container-host", forced=False) as span:
            for step in ("lease", "task:migrate", "deploy"):
                child = tracing.start(step, app="hello", env="staging", step=step, **{"release.number": 7})
                child.set(outcome="ok")
                child.end()
            tracing.current_trace_id()
            span.set(outcome="succeeded", **{"release.number": 7})
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def sdk_start_up(receiver: object) -> float:
    """Milliseconds a new process spends before its first span (what each CLI run with tracing on pays once)."""
    import subprocess

    code = ("import time; t = time.perf_counter(); from conveyor import tracing\n"
            "with tracing.operation('start-up'): pass\nprint((time.perf_counter() - t) * 1000)")
    runs = [float(subprocess.run([sys.executable, "-c", code], env={**os.environ, **receiver.env()},  # type: ignore[attr-defined]
                                 capture_output=True, text=True, check=True).stdout) for _ in range(5)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--spans", type=int, default=2000)
    args = parser.parse_args()
    from tests.fakes.otlp import OtlpReceiver

    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]
    receiver = OtlpReceiver()
    with sample_app() as app:
        shas = [app.v2, app.v1]
        off = [one_deploy(app.repo, shas[n % 2]) for n in range(args.runs)]
        spans_off = spans_alone(args.spans)
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], "tracing off imported OpenTelemetry"
        os.environ.update(receiver.env())
        one_deploy(app.repo, shas[1])  # untimed: loads the SDK once (timed apart below: a CLI pays it each run)
        on = [one_deploy(app.repo, shas[n % 2]) for n in range(args.runs)]
        spans_on = spans_alone(args.spans)
        from conveyor import tracing

        tracing.flush()
    start_up = sdk_start_up(receiver)
    receiver.close()
    print(f"tracing's start-up in a fresh process (import the SDK and exporter, first span): {start_up:.0f} ms")
    print(f"deploys ({args.runs} each, conveyor's own time, median): off {statistics.median(off) * 1000:.0f} ms, "
          f"on {statistics.median(on) * 1000:.0f} ms, difference "
          f"{(statistics.median(on) - statistics.median(off)) * 1000:+.0f} ms (spread off "
          f"{(max(off) - min(off)) * 1000:.0f} ms)")
    print(f"an operation's spans alone ({args.spans} each, median): off {spans_off:.1f} µs, on {spans_on:.1f} µs "
          f"(target on <= +5 ms); {len(receiver.spans)} spans received")


if __name__ == "__main__":
    main()
