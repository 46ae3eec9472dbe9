"""StreamReward: score items as a trainer submits them; answer each as soon as it is computed.

Each item is its own engine call, so the scheduler packs items from many streams and unary
calls into the same batches, and a failing item fails alone (its error travels in the stream).

Flow control: an item takes a slot before it is submitted and gives it back once its answer has
been handed to gRPC. Items are read from the wire only while a slot is free, so at most
``max_in_flight`` items are queued or computing per stream (plus one message read and waiting
for a slot); past that HTTP/2 flow control holds the client's writes back.

Drain: once the server refuses new calls (``stop`` is set) no further message is read; the
stream ends UNAVAILABLE as soon as the items already read are answered, at once when idle.

Cancellation: when the client cancels (or the deadline fires), grpc.aio cancels the handler;
``answers`` then cancels every item task and the engine drops their queued work.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

import grpc
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import ChatInput, EngineAPI, EngineOverloadedError, InvalidInputError, preview
from rewardserve.service import chat_convert, convert
from rewardserve.service.chat_convert import ChatOptions, Origin
from rewardserve.service.errors import to_failure
from rewardserve.service.rpc import CallScope

ITEM_FIELD = "conversation"
_DONE = object()     # the reader's last word: every item read was answered


class ItemStream:
    """One StreamReward call. ``engine_of()`` returns the engine, or raises EngineUnavailableError
    once the server drains: then no new item is read, and the stream ends UNAVAILABLE after the
    items already read have been answered."""

    def __init__(self, requests: AsyncIterator[pb.StreamRewardRequest], engine_of: Callable[[], EngineAPI],
                 call: CallScope, max_in_flight: int, stop: asyncio.Event | None = None) -> None:
        self._requests = requests
        self._stop = stop
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
            async for message in self._until_stopped():
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

    async def _until_stopped(self) -> AsyncIterator[pb.StreamRewardRequest]:
        """The client's messages, until it half-closes or ``stop`` is set: then the stream
        raises UNAVAILABLE (``engine_of`` says the server drains), even while no message comes."""
        if self._stop is None:
            async for message in self._requests:
                yield message
            return
        stopped = asyncio.ensure_future(self._stop.wait())
        messages = self._requests.__aiter__()
        try:
            while True:
                received = asyncio.ensure_future(messages.__anext__())
                await asyncio.wait({received, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not received.done():
                    received.cancel()
                    self._engine_of()  # raises: the server drains
                    return
                try:
                    message = received.result()
                except StopAsyncIteration:
                    return
                yield message
        finally:
            stopped.cancel()

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
                message=f"id: {preview(item.id)} is already in flight in this stream")))
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

    def _check(self, item: pb.StreamItem) -> ChatInput:
        if not item.id:
            raise InvalidInputError("id", "must not be empty (answers are matched by it)")
        if not item.HasField("conversation"):
            raise InvalidInputError(ITEM_FIELD, "must be set")
        return chat_convert.conversation(item.conversation, self._options)

    async def _score(self, item: pb.StreamItem, index: int, chat: ChatInput, options: ChatOptions) -> None:
        arrival, rewards = time.monotonic(), []
        origin = Origin(ITEM_FIELD, group_id=item.group_id)  # the engine's conversations[0]
        try:
            rewards = await self._engine_of().chat_reward(
                [chat], options.params, priority=options.priority, deadline=self._call.deadline,
                request_id=f"{self._call.request_id}/{item.id}")
            result = chat_convert.result(rewards[0], origin, index)
            answer = pb.StreamRewardResponse(id=item.id, result=result)
        except Exception as exc:  # noqa: BLE001 - an item's failure is answered in the stream
            error = chat_convert.proto_error(exc, (origin,))
            answer = pb.StreamRewardResponse(id=item.id, error=item_error(error, self._call))
        finally:
            self._ids.discard(item.id)
        answer.timing.CopyFrom(pb.Timing(**convert.timing(rewards, time.monotonic() - arrival)))
        self._answers.put_nowait(answer)


def item_error(exc: BaseException, call: CallScope) -> pb.ItemError:
    """An item's failure through the one error table (service/errors.py), as an ItemError."""
    failure = to_failure(exc, call.request_id)
    retry = exc.retry_after_s if isinstance(exc, EngineOverloadedError) else 0.0
    return pb.ItemError(code=failure.code.value[0], message=failure.message, retry_after_seconds=retry)
