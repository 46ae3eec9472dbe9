"""THE error table: every exception an RPC can end with, mapped to one gRPC status.

| exception (rewardserve.engine.errors)      | status             | extra                               |
|--------------------------------------------|--------------------|-------------------------------------|
| InvalidInputError, UnsupportedTaskError    | INVALID_ARGUMENT   | message "field[index]: reason";     |
|                                            |                    | google.rpc.BadRequest field violation|
| EngineOverloadedError                      | RESOURCE_EXHAUSTED | google.rpc.RetryInfo + trailing     |
|                                            |                    | metadata ``retry-after-ms``         |
| DeadlineExceededError                      | DEADLINE_EXCEEDED  |                                     |
| EngineUnavailableError                     | UNAVAILABLE        |                                     |
| RequestCancelledError                      | CANCELLED          |                                     |
| anything else                              | INTERNAL           | "internal error (request id …)";    |
|                                            |                    | the traceback goes to the log only  |

Rich details travel as a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer
(read them with ``grpc_status.rpc_status.from_call``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rewardserve.engine.api import (DeadlineExceededError, EngineOverloadedError, EngineUnavailableError,
                                    InvalidInputError, ItemFailedError, RequestCancelledError)

logger = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"
REQUEST_ID_KEY = "x-request-id"  # initial metadata of every call, and the trailers of every failure
# Trailers must fit the client's metadata limit (gRPC's default soft limit is 8 KiB) whatever the
# error echoes: the message travels twice (grpc-message, percent-encoded: up to 12 bytes per
# non-ASCII character; and inside grpc-status-details-bin, base64) beside the field violation.
MAX_MESSAGE_CHARS = 256
MAX_FIELD_CHARS = 128

# Looked up along the exception's MRO, so UnsupportedTaskError (an InvalidInputError) and any
# future subclass land on their parent's row.
_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    EngineOverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ItemFailedError: grpc.StatusCode.RESOURCE_EXHAUSTED,  # out of memory on one item, even alone
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    EngineUnavailableError: grpc.StatusCode.UNAVAILABLE,
    RequestCancelledError: grpc.StatusCode.CANCELLED,
}


@dataclass(frozen=True)
class RpcFailure:
    """What the client is told: code, message and trailing metadata (incl. rich details)."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = field(default_factory=tuple)


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The table's status for ``exc``; INTERNAL when it has no row."""
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return grpc.StatusCode.INTERNAL


def to_failure(exc: BaseException, request_id: str) -> RpcFailure:
    """Translate ``exc`` into what the client sees; logs unexpected errors with their traceback.
    The request id rides in the trailers too: a refusal may end the call before the initial
    metadata (which carries it) reaches the client."""
    failure = _to_failure(exc, request_id)
    if not request_id:
        return failure
    return RpcFailure(failure.code, failure.message, failure.trailing_metadata + ((REQUEST_ID_KEY, request_id),))


def _to_failure(exc: BaseException, request_id: str) -> RpcFailure:
    code = status_code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # The traceback may hold paths, inputs or model internals: log it, reply with the id only.
        logger.error("internal error (request id %s)", request_id, exc_info=exc)
        return _failure(code, f"internal error (request id {request_id})")
    message = bounded(str(exc) or code.name.lower(), MAX_MESSAGE_CHARS)
    if isinstance(exc, InvalidInputError):
        return _failure(code, message, [_bad_request(exc)])
    if isinstance(exc, EngineOverloadedError):
        return _overloaded(exc, message)
    return _failure(code, message)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (saying how much was cut)."""
    if len(text) <= limit:
        return text
    tail = f"... [{len(text) - limit} more chars]"
    return text[:max(0, limit - len(tail))] + tail


def _failure(code: grpc.StatusCode, message: str, details: list | None = None,
             extra: tuple[tuple[str, str], ...] = ()) -> RpcFailure:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details or ():
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    grpc_status = rpc_status.to_status(status)
    return RpcFailure(code, message, tuple(grpc_status.trailing_metadata) + extra)


def _bad_request(exc: InvalidInputError) -> error_details_pb2.BadRequest:
    where = exc.field if exc.index is None else f"{exc.field}[{exc.index}]"
    violation = error_details_pb2.BadRequest.FieldViolation(field=bounded(where, MAX_FIELD_CHARS),
                                                            description=bounded(exc.reason, MAX_MESSAGE_CHARS))
    return error_details_pb2.BadRequest(field_violations=[violation])


def _overloaded(exc: EngineOverloadedError, message: str) -> RpcFailure:
    delay_s = max(0.0, float(exc.retry_after_s))
    seconds = math.floor(delay_s)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((delay_s - seconds) * 1e9)))
    # The metadata copy serves clients without google.rpc support (and proxies that log headers).
    extra = ((RETRY_AFTER_KEY, str(math.ceil(delay_s * 1000))),)
    return _failure(grpc.StatusCode.RESOURCE_EXHAUSTED, message, [retry], extra)
