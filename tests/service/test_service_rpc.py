"""The @unary wrapper with a recording ServicerContext: when the request-id header goes out."""
from __future__ import annotations

import asyncio
import gc

import grpc
import pytest

from rewardserve.engine.errors import InvalidInputError
from rewardserve.service.rpc import CallScope, OpenCalls, unary


class RecordingContext:
    """The parts of grpc.aio.ServicerContext that @unary uses; sends wait for ``wire``."""

    def __init__(self, send_error: Exception | None = None) -> None:
        self.send_error = send_error
        self.events: list[str] = []
        self.wire = asyncio.Event()  # set: the header send completes
        self.wire.set()
        self.trailers = ()

    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()

    async def send_initial_metadata(self, metadata) -> None:
        self.events.append("header started")
        await self.wire.wait()
        if self.send_error is not None:
            raise self.send_error
        self.events.append(f"header sent {dict(metadata)['x-request-id']}")

    def set_code(self, code) -> None:
        self.events.append(f"status {code.name}")

    def set_details(self, details) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata) -> None:
        self.trailers = metadata


class Servicer:
    def __init__(self, work) -> None:
        self.open_calls = OpenCalls()
        self.work = work

    @unary
    async def Call(self, request, call: CallScope):
        return await self.work(call)


class Request:
    request_id = "rid-1"


async def test_the_work_runs_while_the_header_is_on_its_way():
    context = RecordingContext()
    context.wire.clear()

    async def work(call: CallScope) -> str:
        await asyncio.sleep(0)  # as the engine does: the call yields to the loop
        context.events.append("work")
        context.wire.set()  # a handler that awaited the header first would never get here
        return "reply"

    reply = await asyncio.wait_for(Servicer(work).Call(Request(), context), 5)
    assert reply == "reply"
    assert context.events == ["header started", "work", "header sent rid-1"]


async def test_the_reply_waits_for_the_header():
    context = RecordingContext()
    context.wire.clear()
    task = asyncio.ensure_future(Servicer(lambda call: asyncio.sleep(0, "reply")).Call(Request(), context))
    await asyncio.sleep(0.05)
    assert not task.done()  # the work is done, the header is not: the reply must not overtake it
    context.wire.set()
    assert await asyncio.wait_for(task, 5) == "reply"


async def test_an_error_is_sent_after_the_header():
    context = RecordingContext()
    context.wire.clear()

    async def work(call: CallScope):
        raise InvalidInputError("inputs", "must not be empty")

    asyncio.get_running_loop().call_later(0.05, context.wire.set)
    assert await asyncio.wait_for(Servicer(work).Call(Request(), context), 5) is None  # no reply: the status
    assert context.events == ["header started", "header sent rid-1", f"status {grpc.StatusCode.INVALID_ARGUMENT.name}"]
    assert context.details == "inputs: must not be empty"


async def cancel_while_working(context: RecordingContext, settle_s: float = 0.0) -> None:
    """Start a call whose work never ends, let it run ``settle_s``, then cancel it (as a client would)."""
    started = asyncio.Event()

    async def work(call: CallScope):
        started.set()
        await asyncio.sleep(60)

    task = asyncio.ensure_future(Servicer(work).Call(Request(), context))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(settle_s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_call_cancels_its_header_send():
    context = RecordingContext()
    context.wire.clear()
    await cancel_while_working(context)
    await asyncio.sleep(0)
    assert context.events == ["header started"]  # the send was cancelled, not left running
    assert not [t for t in asyncio.all_tasks() if "send_initial_metadata" in repr(t)]


async def test_a_failed_header_send_of_a_cancelled_call_is_not_reported_as_unhandled():
    context = RecordingContext(send_error=RuntimeError("the call is gone"))
    unhandled = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, ctx: unhandled.append(ctx))
    await cancel_while_working(context, settle_s=0.01)  # the header send has failed by then
    gc.collect()  # "exception was never retrieved" is reported when the task is collected
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not unhandled
