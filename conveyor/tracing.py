"""OpenTelemetry traces of operations: each operation one trace, each of its steps a span.

Tracing is on only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
is set: then the SDK exports over OTLP/HTTP through a BatchSpanProcessor (a background thread; a step never
waits on the collector) that the SDK flushes when the process exits. Off, nothing here imports
OpenTelemetry and every call is a no-op on a shared null span, so an operation pays nothing.

The rest of conveyor sees only this module: `operation(...)` opens a span (a trace's root, a child of the
current span, or of a W3C `traceparent` a caller sent), `span_at(...)` records one whose start is already
past, and `Span` is the handle both return.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
SERVICE_NAME = "conveyor"

_provider: Any = None  # the SDK's TracerProvider once tracing started in this process


def enabled() -> bool:
    """Whether spans are exported: an OTLP endpoint is configured and the SDK is not switched off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARS)


def valid_traceparent(value: str | None) -> str:
    """`value` if it is a W3C traceparent of version 00 (lowercase hex, ids not all zeros), else ""."""
    value = (value or "").strip()
    return value if TRACEPARENT.match(value) else ""


class Span:
    """A span being recorded; the null span (tracing off) ignores everything and has no trace id."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    @property
    def trace_id(self) -> str:
        if self._span is None:
            return ""
        return f"{self._span.get_span_context().trace_id:032x}"

    def set(self, **attributes: Any) -> None:
        if self._span is not None:
            self._span.set_attributes(_attributes(attributes))

    def fail(self, error: str) -> None:
        """Mark the span's outcome an error, with a (redacted) description."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error[:500]))
            self._span.set_attribute("error.message", error[:2000])

    def end(self, end_ns: int | None = None) -> None:
        if self._span is not None:
            self._span.end(end_time=end_ns)
            self._span = None


NULL = Span()


def current_trace_id() -> str:
    """The trace id of the span now current in this thread, "" when there is none (or tracing is off)."""
    if _provider is None:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


@contextmanager
def operation(name: str, *, parent: str = "", **attributes: Any) -> Iterator[Span]:
    """A span current for the block: a child of `parent` (a traceparent) when given, else of the current
    span, else a new trace's root. An exception leaving the block marks it failed."""
    tracer = _tracer()
    if tracer is None:
        yield NULL
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    with tracer.start_as_current_span(name, context=context, attributes=_attributes(attributes),
                                      record_exception=False, set_status_on_exception=False) as span:
        handle = Span(span)
        try:
            yield handle
        except BaseException as exc:
            handle.fail(f"{type(exc).__name__}: {exc}")
            raise


def start(name: str, *, start_ns: int | None = None, **attributes: Any) -> Span:
    """A child of the current span, not made current: the caller ends it (a step that spans calls)."""
    tracer = _tracer()
    if tracer is None:
        return NULL
    return Span(tracer.start_span(name, attributes=_attributes(attributes), start_time=start_ns))


def now_ns() -> int:
    return time.time_ns()


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """conveyor's attributes under `conveyor.`; OpenTelemetry takes str, bool, int and float values; None
    means "not known" and is left out."""
    return {f"conveyor.{key}": value if isinstance(value, str | bool | int | float) else str(value)
            for key, value in attributes.items() if value is not None}


def _tracer() -> Any:
    if _provider is None and not enabled():
        return None
    return _start().get_tracer("conveyor")


def _start() -> Any:
    """The process's TracerProvider with the OTLP/HTTP exporter behind a batch processor (both read the
    standard OTEL_* variables: endpoint, headers, timeout, batch sizes)."""
    global _provider
    if _provider is None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME})
        provider = TracerProvider(resource=resource)  # shut down (so flushed) at exit by the SDK
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
    return _provider


def flush(timeout_ms: int = 5000) -> None:
    """Export what the batch holds now (a server calls it when it drains; the CLI's exit does it anyway)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)
