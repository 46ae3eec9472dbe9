"""What every unary RPC does around its handler: request id, deadline, error mapping, trailers.

``@unary`` turns ``async def Method(self, request, call: CallScope) -> reply`` into a grpc.aio
handler, so the servicer's methods stay "convert → engine → convert" and never see
``grpc.ServicerContext``.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import grpc

from rewardserve.engine.api import EngineUnavailableError, InvalidInputError
from rewardserve.service.errors import REQUEST_ID_KEY, to_failure
from rewardserve.service.wire import Malformed

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_LEN = 128

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass
class CallScope:
    """One call as the servicer sees it: its id, its deadline and the trailers to send."""

    request_id: str
    deadline: float | None  # a time.monotonic() instant; None when the caller set no deadline
    started: float = field(default_factory=time.monotonic)
    trailing_metadata: list[tuple[str, str]] = field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds since the call arrived."""
        return time.monotonic() - self.started


class OpenCalls:
    """The calls being handled (their tasks), so that a drain can wait for them to finish, and
    end those still open when the grace period is over (``expire``)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.expired = False  # set by expire(): a cancelled call then ends UNAVAILABLE
        self.refusing = asyncio.Event()  # set once new calls are refused (streams stop reading)

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the enclosed call (the current task) as open."""
        task = asyncio.current_task()
        self._tasks.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    def expire(self) -> int:
        """The grace period is over: cancel every open call; each ends UNAVAILABLE (see
        ``ended_by_drain``) and the engine drops its queued work. Returns how many."""
        self.expired = True
        for task in self._tasks:
            task.cancel()
        return len(self._tasks)

    def ended_by_drain(self, exc: BaseException) -> BaseException:
        """A call's cancellation by ``expire`` as the UNAVAILABLE it must end with; other
        exceptions (a client's own cancellation included) are returned as they are."""
        if isinstance(exc, asyncio.CancelledError) and self.expired:
            return EngineUnavailableError("the server stopped (drain grace period over); retry on another replica")
        return exc

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is open; False when ``timeout`` seconds passed first."""
        if self._idle.is_set():  # wait_for(…, 0) would time out even on a set event
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


def unary(method: Callable[[Any, Any, CallScope], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a servicer method: open the call's scope, run it, map any error through the table.

    The servicer provides ``open_calls: OpenCalls``; every call is counted there while it runs.

    ``asyncio.CancelledError`` is passed on: when the client cancels (or its deadline fires),
    grpc.aio cancels this task and the cancellation reaches the engine, which drops queued work.
    Only a cancellation by the drain (``OpenCalls.expire``) is answered, as UNAVAILABLE.
    """
    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with self.open_calls.track():
            return await _handle(method, self, request, context)
    return handler


async def _handle(method: Callable[[Any, Any, CallScope], Awaitable[Any]], servicer: Any, request: Any,
                  context: grpc.aio.ServicerContext) -> Any:
    """Run one call: the request id first (so refusals carry it too), then the deadline, then the work."""
    scope = CallScope(request_id="", deadline=_deadline(context))
    header: asyncio.Future | None = None
    try:
        is_bad_id = _adopt_request_id(scope, request, context)
        header = _start_header(scope, context)
        if is_bad_id:
            raise _bad_id_error()
        # The deadline travels to the engine, which alone decides (before queueing, and when a
        # batch is cut) that work is too late to compute.
        if isinstance(request, Malformed):
            raise request.error  # the bytes did not decode (service/wire.py)
        reply = await method(servicer, request, scope)
        await header
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - every failure goes through the one table
        exc = servicer.open_calls.ended_by_drain(exc)
        if isinstance(exc, asyncio.CancelledError):
            raise  # the client cancelled: nothing can be sent
        failure = to_failure(exc, scope.request_id)
        _log_call(method.__name__, scope, failure.code)
        await _settle(header)  # the status must not overtake the initial metadata
        # The status is set and the handler returns, rather than context.abort(): gRPC keeps
        # abort's exception on the call's state, in a reference cycle with this call's frames
        # and so with its request, which then lived until the next full garbage collection (a
        # refused 50 MB request: +500 MB per call).
        context.set_code(failure.code)
        context.set_details(failure.message)
        context.set_trailing_metadata(tuple(scope.trailing_metadata) + failure.trailing_metadata)
        return None
    finally:
        _drop(header)  # cancelled call: nothing more may be sent
    if scope.trailing_metadata:
        context.set_trailing_metadata(tuple(scope.trailing_metadata))
    _log_call(method.__name__, scope, grpc.StatusCode.OK)
    return reply


def stream(method: Callable[[Any, AsyncIterator[Any], CallScope], AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Wrap a bidirectional-streaming servicer method the way ``@unary`` wraps unary ones.

    The request id comes from ``x-request-id`` metadata (or is made here) and goes out in the
    initial metadata before any message is read; the call's deadline is the stream's. A
    stream-level error (bad options, draining) ends the stream through the one error table;
    per-item errors are the method's business and travel inside the stream.
    """
    @functools.wraps(method)
    async def handler(self: Any, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with self.open_calls.track():
            scope = CallScope(request_id="", deadline=_deadline(context))
            try:
                is_bad_id = _adopt_request_id(scope, None, context)
                await context.send_initial_metadata(_id_header(scope))
                if is_bad_id:
                    raise _bad_id_error()
                async for reply in method(self, requests, scope):
                    yield reply
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - every stream-level failure goes through the table
                exc = self.open_calls.ended_by_drain(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise  # the client cancelled: nothing can be sent
                failure = to_failure(exc, scope.request_id)
                _log_call(method.__name__, scope, failure.code)
                await context.abort(failure.code, failure.message, failure.trailing_metadata)
            _log_call(method.__name__, scope, grpc.StatusCode.OK)
    return handler


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _start_header(scope: CallScope, context: grpc.aio.ServicerContext) -> asyncio.Future:
    """Start sending the request id as initial metadata; returns the sending task.

    The send is one more round through gRPC's completion queue (about 0.1 ms): it runs while the
    call works instead of before it, and is awaited before the reply or the error goes out.
    """
    return asyncio.ensure_future(context.send_initial_metadata(_id_header(scope)))


def _id_header(scope: CallScope) -> Metadata:
    return ((REQUEST_ID_KEY, scope.request_id),)


async def _settle(header: asyncio.Future | None) -> None:
    """Wait for the initial metadata, if it was started; its own failure (the call ended) is moot."""
    if header is None:
        return
    try:
        await header
    except Exception:  # noqa: BLE001 - the call is failing anyway; abort reports the first error
        pass


def _drop(header: asyncio.Future | None) -> None:
    """Cancel an unfinished header send, and mark a failed one as seen (no 'never retrieved' log)."""
    if header is None:
        return
    if not header.done():
        header.cancel()
    elif not header.cancelled():
        header.exception()


def _bad_id_error() -> InvalidInputError:
    return InvalidInputError("request_id", f"must be 1 to {MAX_REQUEST_ID_LEN} printable ASCII characters")


def _adopt_request_id(scope: CallScope, request: Any, context: grpc.aio.ServicerContext) -> bool:
    """Use the caller's id (request field, else ``x-request-id`` metadata from a mesh) or ours.

    The id goes out in the initial metadata even when the call is refused, so it can be traced.
    Returns True when the caller gave an id that cannot be used (the call is then refused).
    """
    given = getattr(request, "request_id", "") or _invocation_value(context, REQUEST_ID_KEY)
    usable = _is_usable_request_id(given)
    scope.request_id = given if usable else uuid.uuid4().hex  # no urandom call when the caller named it
    return bool(given) and not usable


def _invocation_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return ""


def _is_usable_request_id(value: str) -> bool:
    # It is echoed as a metadata value, which gRPC restricts to printable ASCII.
    return 0 < len(value) <= MAX_REQUEST_ID_LEN and all(" " <= ch <= "~" for ch in value)


def _log_call(name: str, scope: CallScope, code: grpc.StatusCode) -> None:
    logger.debug("%s request_id=%s status=%s %.1f ms", name, scope.request_id, code.name, scope.elapsed() * 1e3)
