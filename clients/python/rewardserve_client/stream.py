"""StreamReward from Python: submit conversations as rollouts finish, get each score back by id.

``AsyncRewardStream`` (from ``AsyncRewardClient.stream``) is the trainer-facing object: ``submit``
returns a future per item, at most ``max_in_flight`` items are unanswered at a time (``submit``
waits for room: client-side flow control that mirrors the server's), a failed item fails only
its own future, and leaving the ``async with`` block early cancels the stream, which drops the
server's queued work. ``stream_items`` is the blocking generator behind ``RewardClient.stream``.

Streams are not retried: a stream is not idempotent once items were sent. A stream-level
failure (the server drains, the deadline passes) fails every pending item with that error.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, AsyncIterator, Dict, Iterable, Iterator, Optional, Tuple

import grpc

from rewardserve_client import _requests
from rewardserve_client._results import to_chat_reward_result, to_timing
from rewardserve_client.errors import (CallCancelledError, RewardServeError, from_item_error,
                                       from_rpc_error, invalid_argument)
from rewardserve_client.types import ChatRewardResult, StreamResult
from rewardserve_client.v1 import reward_service_pb2 as pb

# (id, conversation) or (id, conversation, group_id)
ItemLike = Tuple[Any, ...]


def to_stream_result(answer: pb.StreamRewardResponse, request_id: str = "") -> StreamResult:
    """A StreamRewardResponse as a StreamResult (its error as a RewardServeError)."""
    timing = to_timing(answer.timing)
    if answer.HasField("result"):
        return StreamResult(id=answer.id, result=to_chat_reward_result(answer.result), timing=timing)
    error = answer.error
    return StreamResult(id=answer.id, error=from_item_error(
        error.code, error.message, answer.id, request_id, error.retry_after_seconds), timing=timing)


def _item_request(item: ItemLike, where: str) -> pb.StreamRewardRequest:
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise invalid_argument(f"{where}: expected an (id, conversation) or (id, conversation, "
                               f"group_id) tuple, got {type(item).__name__}")
    item_id, conversation, group_id = item if len(item) == 3 else (*item, "")
    return pb.StreamRewardRequest(items=[_requests.stream_item(item_id, conversation, group_id, where)])


class _ItemRequests:
    """The request messages of a blocking stream: the options, then one message per item.

    gRPC consumes this iterator in its own thread and turns an exception raised there into a
    bare CANCELLED; so a bad item (or the caller's iterator failing) is kept here instead, the
    request side ends, and :func:`stream_items` raises it in the caller's thread.
    """

    def __init__(self, options: pb.StreamRewardOptions, items: Iterable[ItemLike]):
        self.options = options
        self.items = items
        self.error: Optional[BaseException] = None

    def __iter__(self) -> Iterator[pb.StreamRewardRequest]:
        yield pb.StreamRewardRequest(options=self.options)
        try:
            for index, item in enumerate(self.items):
                yield _item_request(item, f"items[{index}]")
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, not swallowed
            self.error = exc


def stream_items(stub, items: Iterable[ItemLike], options: pb.StreamRewardOptions, *,
                 timeout: Optional[float], metadata, request_id: str) -> Iterator[StreamResult]:
    """Blocking: send ``items`` and yield one StreamResult per item, in completion order.

    A malformed item raises its InvalidArgumentError once the items before it are answered.
    """
    requests = _ItemRequests(options, items)
    call = stub.StreamReward(iter(requests), timeout=timeout, metadata=metadata)
    try:
        for answer in call:
            yield to_stream_result(answer, request_id)
    except grpc.RpcError as exc:
        if requests.error is None:
            raise from_rpc_error(exc, request_id) from exc
    finally:
        call.cancel()  # no-op once finished; frees the server's work when the caller stops early
    if requests.error is not None:
        raise requests.error


class AsyncRewardStream:
    """One open StreamReward call; use ``async with client.stream(...) as stream``."""

    def __init__(self, stub, options: pb.StreamRewardOptions, *, max_in_flight: int,
                 timeout: Optional[float], metadata, request_id: str):
        self._stub = stub
        self._options = options
        self._timeout = timeout
        self._metadata = metadata
        self.request_id = request_id
        self._slots = asyncio.Semaphore(max_in_flight)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._pending: Dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._call = None
        self._reader: Optional[asyncio.Task] = None
        self._closed = False

    async def __aenter__(self) -> "AsyncRewardStream":
        self._call = self._stub.StreamReward(self._requests(), timeout=self._timeout,
                                             metadata=self._metadata)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.cancel()

    async def submit(self, conversation: Any, *, id: Optional[str] = None,
                     group_id: str = "") -> "asyncio.Future[ChatRewardResult]":
        """Send one conversation (any ``chat_reward`` form); returns the future of its result.

        Waits while ``max_in_flight`` items are unanswered. The future raises the item's
        RewardServeError when it failed. ``id`` defaults to a counter.
        """
        if self._call is None or self._closed:
            raise RewardServeError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "submit: the stream is not open "
                                   "(use `async with client.stream() as s`)", self.request_id)
        item_id = str(id) if id is not None else f"item-{next(self._ids)}"
        if item_id in self._pending:
            raise invalid_argument(f"submit: id {item_id!r} is already in flight")
        # Bad input raises here, before waiting for room.
        request = _item_request((item_id, conversation, group_id), f"submit(id={item_id!r})")
        await self._slots.acquire()
        future = asyncio.get_running_loop().create_future()
        self._pending[item_id] = future
        self._outbox.put_nowait(request)
        return future

    async def score(self, conversation: Any, **kwargs: Any) -> ChatRewardResult:
        """Submit and wait for this one result."""
        return await (await self.submit(conversation, **kwargs))

    async def close(self) -> None:
        """Send no more items; wait until every submitted item is answered."""
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(None)
        if self._reader is not None:
            await self._reader

    def cancel(self) -> None:
        """Cancel the stream: the server drops queued work; pending futures fail CANCELLED."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        self._fail_pending(CallCancelledError(grpc.StatusCode.CANCELLED, "the stream was cancelled",
                                              self.request_id))

    @property
    def in_flight(self) -> int:
        """Items submitted and not answered yet."""
        return len(self._pending)

    async def _requests(self) -> AsyncIterator[pb.StreamRewardRequest]:
        yield pb.StreamRewardRequest(options=self._options)
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for answer in self._call:
                self._settle(to_stream_result(answer, self.request_id))
        except asyncio.CancelledError:
            return
        except grpc.RpcError as exc:
            self._fail_pending(from_rpc_error(exc, self.request_id))
            return
        self._fail_pending(RewardServeError(grpc.StatusCode.UNKNOWN,
                                            "the stream ended before answering", self.request_id))

    def _settle(self, answer: StreamResult) -> None:
        future = self._pending.pop(answer.id, None)
        if future is None:
            return  # an answer to an id we did not send (e.g. a refused empty id)
        self._slots.release()
        if future.done():
            return
        if answer.error is not None:
            future.set_exception(answer.error)
        else:
            future.set_result(answer.result)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            self._slots.release()
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: an un-awaited future must not log it again at exit
