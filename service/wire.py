"""The RewardService on the wire: request messages arrive as raw bytes and are decoded here.

gRPC's own deserializer runs before any servicer code: a message it cannot decode (invalid
UTF-8 in a string, a truncated varint, nesting past the parser's depth limit) ended unary calls
UNKNOWN and StreamReward INTERNAL, with a traceback in the log. So the handlers registered here
take the bytes as they came (no request deserializer) and decode them themselves; an undecodable
message becomes an INVALID_ARGUMENT through the one error table (service/errors.py), is counted
per method (``MalformedLog.counts``, exported as ``rewardserve_malformed_requests``) and logged
at most once per interval.

A large request's token ids are not decoded here: service/packed.py cuts them out of the bytes,
the rest of the message is decoded, and the engine reads the ids from the bytes when (and as far
as) it needs them, so a 50 MB request holds the event loop ~10 ms, not ~300 ms, and one refused
as too long is never decoded (``DecodeStats`` counts both kinds of decode per method).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import Message
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import InvalidInputError
from rewardserve.service import packed

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["RewardService"]
MALFORMED_FIELD = "request"
LOG_INTERVAL_S = 10.0  # at most one log line per interval, however many bad messages arrive
# After a request of at least this many bytes, free heap memory goes back to the system: the
# parsed message (a 50 MB token-id request is ~200 MB of parsed ids) is allocated in pieces that
# glibc keeps in its per-thread arenas after they are freed (four such requests: +200 MB RSS kept).
TRIM_AFTER_BYTES = 16 << 20


class MalformedLog:
    """Counts undecodable messages per method; logs one line per ``interval_s`` (with how many
    were not logged), so a flood of garbage cannot flood the log."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: dict[str, int] = {}
        self._interval_s = interval_s
        self._clock = clock
        self._next_log = float("-inf")
        self._unlogged = 0
        self._lock = threading.Lock()  # metrics read the counts from their HTTP thread

    def record(self, method: str, reason: str) -> None:
        """Count one undecodable ``method`` message; log it unless a line went out recently."""
        with self._lock:
            self.counts[method] = self.counts.get(method, 0) + 1
            now = self._clock()
            if now < self._next_log:
                self._unlogged += 1
                return
            unlogged, self._unlogged, self._next_log = self._unlogged, 0, now + self._interval_s
        logger.warning("refused an undecodable %s message (%s); %d more since the last such line",
                       method, reason, unlogged)


class DecodeStats:
    """Request messages decoded per method: ``whole`` (every byte through protobuf) and ``cut``
    (large token ids left on the wire, see service/packed.py)."""

    def __init__(self) -> None:
        self.whole: dict[str, int] = {}
        self.cut: dict[str, int] = {}

    def count(self, method: str, cut: bool) -> None:
        counts = self.cut if cut else self.whole
        counts[method] = counts.get(method, 0) + 1


@dataclass(frozen=True)
class Malformed:
    """A unary request that did not decode: ``@unary`` answers it with ``error``."""

    error: InvalidInputError
    request_id: str = ""  # no caller id to adopt: the call gets a fresh one


def decode(cls: type[Message], raw: bytes, method: str, log: MalformedLog) -> Message | Malformed:
    """``raw`` as a ``cls`` message, or a ``Malformed`` naming why it is not one."""
    try:
        return cls.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - DecodeError, and whatever else a parser raises on garbage
        return Malformed(_malformed_error(cls, method, exc, log))


async def decode_stream(cls: type[Message], raws: AsyncIterator[bytes], method: str,
                        log: MalformedLog) -> AsyncIterator[Message]:
    """The stream's messages, decoded; an undecodable one raises INVALID_ARGUMENT (the stream ends)."""
    async for raw in raws:
        message = decode(cls, raw, method, log)
        if isinstance(message, Malformed):
            raise message.error
        yield message


def _malformed_error(cls: type[Message], method: str, exc: Exception, log: MalformedLog) -> InvalidInputError:
    # The parser's text names no field and echoes no input; keep it short all the same.
    reason = (str(exc) or type(exc).__name__)[:120]
    log.record(method, reason)
    return InvalidInputError(MALFORMED_FIELD, f"not a decodable {cls.DESCRIPTOR.full_name} message "
                                              f"(invalid UTF-8 in a string, truncated or malformed bytes): {reason}")


def add_to_server(servicer: Any, server: grpc.aio.Server, log: MalformedLog,
                  stats: DecodeStats | None = None) -> None:
    """Register ``servicer``'s RewardService methods, each taking raw request bytes."""
    stats = DecodeStats() if stats is None else stats
    handlers = {method.name: _handler(servicer, method, log, stats) for method in SERVICE.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _handler(servicer: Any, method: Any, log: MalformedLog, stats: DecodeStats) -> grpc.RpcMethodHandler:
    request_cls = getattr(pb, method.input_type.name)
    serialize = getattr(pb, method.output_type.name).SerializeToString
    behaviour = getattr(servicer, method.name)
    name = method.name
    if method.client_streaming and method.server_streaming:
        def streamed(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            return behaviour(decode_stream(request_cls, raws, name, log), context)
        return grpc.stream_stream_rpc_method_handler(streamed, response_serializer=serialize)
    if method.client_streaming or method.server_streaming:
        raise TypeError(f"{name}: only unary and bidirectional RPCs are served")

    async def single(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        size = len(raw)
        stripped = None  # None: decode it whole
        if packed.walks(request_cls.DESCRIPTOR.full_name, size):  # counted off the event loop
            stripped = await asyncio.to_thread(packed.strip, request_cls.DESCRIPTOR.full_name, raw)
        stats.count(name, cut=stripped is not None)
        request = decode(request_cls, raw if stripped is None else stripped.rest, name, log)
        bound = packed.bind(stripped.ids if stripped is not None else {})
        del raw, stripped  # the cut ids keep their bytes alive until the call ends
        try:
            return await behaviour(request, context)
        finally:
            packed.unbind(bound)
            del request  # the call's last reference: freed before the heap is trimmed
            if size >= TRIM_AFTER_BYTES:
                release_free_memory()
    return grpc.unary_unary_rpc_method_handler(single, response_serializer=serialize)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
