"""Logging set-up (``--log-format text|json``) and W3C trace context in every log line of a call.

A caller (or its mesh sidecar) sends ``traceparent: 00-<trace id>-<parent span id>-<flags>``
(W3C Trace Context). ``TraceInterceptor`` reads it at the start of each call into a context
variable of the call's task, so every line logged while handling that call carries
``trace_id`` and ``span_id`` (JSON fields, or a `` trace=<id> span=<id>`` suffix in text): a
log search for the trace finds the server's lines next to the caller's. (OpenTelemetry spans of
our own are not made; see the README's Operations section.)
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc

from rewardserve.service.handlers import wrap_handler

TRACEPARENT_KEY = "traceparent"
UNTRACED_PREFIX = "/grpc.health.v1.Health/"  # probes: many, and they log nothing
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True)
class TraceContext:
    """The W3C trace a call belongs to: 32 and 16 lower-case hex digits."""

    trace_id: str
    span_id: str


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("rewardserve_trace", default=None)


def current_trace() -> TraceContext | None:
    """The trace of the call being handled in this task, if its caller sent one."""
    return _current.get()


def parse_traceparent(value: str) -> TraceContext | None:
    """``traceparent`` as a TraceContext; None when malformed or all-zero (the spec says: ignore it)."""
    match = _TRACEPARENT.match(value.strip())
    if not match or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace_id, span_id = match.group(2), match.group(3)
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return TraceContext(trace_id, span_id)


class TraceFilter(logging.Filter):
    """Adds ``trace_id`` / ``span_id`` (or None) and a text suffix to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = _current.get()
        record.trace_id = trace.trace_id if trace else None
        record.span_id = trace.span_id if trace else None
        record.trace_suffix = f" trace={trace.trace_id} span={trace.span_id}" if trace else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, trace ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if getattr(record, "trace_id", None):
            entry["trace_id"], entry["span_id"] = record.trace_id, record.span_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str, stream: Any = None) -> None:
    """Set up the root logger for ``rewardserve serve`` (replaces any handler set before)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class TraceInterceptor(grpc.aio.ServerInterceptor):
    """Puts each call's ``traceparent`` into its task's context."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNTRACED_PREFIX):
            return handler
        return wrap_handler(handler, _enter)


async def _enter(context: grpc.aio.ServicerContext) -> None:
    value = _metadata_value(context.invocation_metadata(), TRACEPARENT_KEY)
    _current.set(parse_traceparent(value) if value else None)


def _metadata_value(metadata: Any, key: str) -> str:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return ""
