"""StreamReward: score items as a trainer submits them; answer each as soon as it is computed.

Each item is its own engine call, so the scheduler packs items from many streams and unary
calls into the same batches, and a failing item fails alone (its error travels in the stream).

Flow control: an item takes a slot before it is submitted and gives it back once its answer has
been handed to gRPC. Items are read from the wire only while a slot is free, so at most
``max_in_flight`` items are queued or computing per stream (plus one message read and waiting
for a slot); past that HTTP/2 flow control holds the client's writes back.

Cancellation: when the client cancels (or the deadline fires), grpc.aio cancels the handler;
``answers`` then cancels every item task and the engine drops their queued work.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import grpc
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.errors import EngineOverloadedError, InvalidInputError, ItemError
from rewardserve.service import chat_convert, convert
from rewardserve.service.chat_convert import ChatOptions, Origin
from rewardserve.service.errors import to_failure
from rewardserve.service.rpc import CallScope

MAX_IN_FLIGHT = 256  # default per-stream limit (--stream-max-in-flight); clients may ask for less
ITEM_FIELD = "conversation"
_DONE = object()     # the reader's last word: every item read was answered


class ItemStream:
    """One StreamReward call. ``engine_of()`` returns the engine, or raises EngineUnavailableError
    once the server drains: then no new item is read, and the stream ends UNAVAILABLE after the
    items already read have been answered."""

    def __init__(self, requests: AsyncIterator[pb.StreamRewardRequest], engine_of: Callable[[], Any],
                 call: CallScope, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._requests = requests
        self._max_in_flight = max_in_flight
        self._engine_of = engine_of
        self._call = call
        self._answers: asyncio.Queue = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._ids: set[str] = set()   # ids of the items in flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._options = chat_convert.chat_options(pb.StreamRewardOptions())
        self._count = 0               # items read so far: the next item's index

    async def answers(self) -> AsyncIterator[pb.StreamRewardResponse]:
        """Yield one answer per item, in completion order; raise a stream-level error at the end."""
        self._engine_of()  # a stream opened while loading or draining is refused at once
        reader = asyncio.create_task(self._read(), name=f"stream-read-{self._call.request_id}")
        try:
            while (answer := await self._answers.get()) is not _DONE:
                yield answer
                self._slots.release()  # the answer is with gRPC: room for one more item
            await reader  # raises the stream-level error that ended reading, if any
        finally:
            for task in (reader, *self._tasks):
                task.cancel()  # the caller went away: the engine drops the queued work

    async def _read(self) -> None:
        try:
            first = True
            async for message in self._requests:
                self._read_options(message, first)
                first = False
                for item in message.items:
                    await self._slots.acquire()
                    self._engine_of()  # draining: stop taking items (raises UNAVAILABLE below)
                    self._accept(item)
        finally:
            # Every item read gets its answer before the stream ends, with an error or without.
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            self._answers.put_nowait(_DONE)

    def _read_options(self, message: pb.StreamRewardRequest, first: bool) -> None:
        if not message.HasField("options"):
            return
        if not first:
            raise InvalidInputError("options", "only the first message of a stream may set them")
        self._options = chat_convert.chat_options(message.options)
        wanted = message.options.max_in_flight
        limit = min(wanted, self._max_in_flight) if wanted else self._max_in_flight
        self._slots = asyncio.Semaphore(limit)

    def _accept(self, item: pb.StreamItem) -> None:
        index, self._count = self._count, self._count + 1
        if item.id and item.id in self._ids:
            # Not INVALID_ARGUMENT: the item may be fine, its id is taken. The code tells the
            # caller this answer is not the in-flight item's result for the same id.
            self._answers.put_nowait(pb.StreamRewardResponse(id=item.id, error=pb.ItemError(
                code=grpc.StatusCode.ALREADY_EXISTS.value[0],
                message=f"id: {item.id!r} is already in flight in this stream")))
            return
        try:
            chat = self._check(item)
        except InvalidInputError as exc:
            self._answers.put_nowait(pb.StreamRewardResponse(id=item.id, error=item_error(exc, self._call)))
            return
        self._ids.add(item.id)
        task = asyncio.create_task(self._score(item, index, chat, self._options))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check(self, item: pb.StreamItem) -> Any:
        if not item.id:
            raise InvalidInputError("id", "must not be empty (answers are matched by it)")
        if not item.HasField("conversation"):
            raise InvalidInputError(ITEM_FIELD, "must be set")
        return chat_convert.conversation(item.conversation, self._options, ITEM_FIELD, None)

    async def _score(self, item: pb.StreamItem, index: int, chat: Any, options: ChatOptions) -> None:
        arrival, rewards = time.monotonic(), []
        try:
            rewards = await self._engine_of().chat_reward(
                [chat], options.params, priority=options.priority, deadline=self._call.deadline,
                request_id=f"{self._call.request_id}/{item.id}")
            result = chat_convert.result(rewards[0], Origin(group_id=item.group_id), index)
            answer = pb.StreamRewardResponse(id=item.id, result=result)
        except Exception as exc:  # noqa: BLE001 - an item's failure is answered in the stream
            answer = pb.StreamRewardResponse(id=item.id, error=item_error(_as_item_error(exc), self._call))
        finally:
            self._ids.discard(item.id)
        answer.timing.CopyFrom(pb.Timing(**convert.timing(rewards, time.monotonic() - arrival)))
        self._answers.put_nowait(answer)


def item_error(exc: BaseException, call: CallScope) -> pb.ItemError:
    """An item's failure through the one error table (service/errors.py), as an ItemError."""
    failure = to_failure(exc, call.request_id)
    retry = exc.retry_after_s if isinstance(exc, EngineOverloadedError) else 0.0
    return pb.ItemError(code=failure.code.value[0], message=failure.message, retry_after_seconds=retry)


def _as_item_error(exc: Exception) -> Exception:
    """The engine names the one-item call's field ``conversations[0]``; the stream calls it ``conversation``."""
    if isinstance(exc, ItemError) and exc.field == chat_convert.ENGINE_FIELD and exc.index == 0:
        return exc.at(ITEM_FIELD)
    return exc

