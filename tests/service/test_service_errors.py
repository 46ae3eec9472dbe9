"""DESIGN.md's error table, end to end: status codes, messages, rich details, and isolation."""
from __future__ import annotations

import asyncio
import gc
import logging
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.errors import (DeadlineExceededError, EngineOverloadedError, EngineUnavailableError,
                                       InvalidInputError, ItemFailedError, RequestCancelledError)

TEXT = pb.EncodeInput(text="hello")


def ids(*values: int) -> pb.EncodeInput:
    return pb.EncodeInput(token_ids=pb.TokenIds(ids=values))


def user(content: str = "hi", role: str = "user") -> pb.Conversation:
    return pb.Conversation(messages=[pb.ChatMessage(role=role, content=content)])


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def details_of(error: grpc.aio.AioRpcError, kind):
    """The google.rpc detail of type ``kind`` in the failed call's status."""
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            value = kind()
            detail.Unpack(value)
            return value
    raise AssertionError(f"no {kind.DESCRIPTOR.name} in {status}")


BAD_REQUESTS = [  # (rpc, request, where the message points) — the proto shape checks of the service.
    # What values mean is the engine's to check: tests/service/test_service_real_engine.py.
    ("Encode", pb.EncodeRequest(), "inputs: must not be empty"),
    ("Encode", pb.EncodeRequest(inputs=[TEXT, TEXT, TEXT, pb.EncodeInput()]), "inputs[3]: set either text or"),
    ("Encode", pb.EncodeRequest(task=99, inputs=[TEXT]), "task: unknown value 99"),
    ("Encode", pb.EncodeRequest(inputs=[TEXT], pooling=pb.PoolingParams(pooling_type=42)),
     "pooling.pooling_type: unknown value 42"),
    ("Encode", pb.EncodeRequest(inputs=[TEXT], truncation=pb.Truncation(side=7)), "truncation.side: unknown"),
    ("Encode", pb.EncodeRequest(inputs=[TEXT], request_id="é" * 3), "request_id: must be 1 to 128 printable"),
    ("Reward", pb.RewardRequest(), "inputs: must not be empty"),
    ("ChatReward", pb.ChatRewardRequest(), "conversations: must not be empty"),
]


async def test_a_refused_call_keeps_nothing_alive_after_it_ends(stub):
    # context.abort()'s exception is kept by gRPC on the call's state, in a reference cycle with
    # the call's frames: each refused request (a 50 MB token-id one: +500 MB) stayed in memory
    # until the next full garbage collection. With the collector off, nothing may outlive the call.
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            await rpc_error(stub.Encode(pb.EncodeRequest()))
        alive = [o for o in gc.get_objects() if type(o) in (InvalidInputError, grpc.aio.AbortError)]
    finally:
        gc.enable()
    assert alive == []


@pytest.mark.parametrize("rpc, request_, message", BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument_naming_field_and_item(stub, rpc, request_, message):
    call = getattr(stub, rpc)(request_)
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)
    violation = details_of(error, error_details_pb2.BadRequest).field_violations[0]
    assert message.startswith(violation.field + ":")


async def test_bad_call_does_not_disturb_a_concurrent_good_call(stub, fake):
    fake.hold.clear()  # keep the good call in flight
    good = stub.Encode(pb.EncodeRequest(inputs=[TEXT, ids(5)], request_id="good"))
    await asyncio.wait_for(fake.queued.wait(), 5)
    bad = await rpc_error(stub.Encode(pb.EncodeRequest(inputs=[TEXT, ids(999)], request_id="bad")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs[1]" in bad.details()
    fake.hold.set()
    reply = await good
    assert reply.request_id == "good" and len(reply.results) == 2


async def test_overload_is_resource_exhausted_with_retry_info_and_header(stub, fake):
    fake.fail_with = EngineOverloadedError("queue full: 4096 requests waiting", retry_after_s=1.25)
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT]))
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in error.details()
    retry = details_of(error, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 250_000_000)
    assert dict(error.trailing_metadata())["retry-after-ms"] == "1250"


async def test_overloaded_reward_keeps_its_deprecation_trailer(stub, fake):
    fake.fail_with = EngineOverloadedError("busy", retry_after_s=0.1)
    error = await rpc_error(stub.Reward(pb.RewardRequest(inputs=[TEXT])))
    trailers = dict(error.trailing_metadata())
    assert trailers["retry-after-ms"] == "100" and "x-rewardserve-deprecated" in trailers


@pytest.mark.parametrize("exc, code", [
    (DeadlineExceededError("deadline passed before compute"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (EngineUnavailableError("draining"), grpc.StatusCode.UNAVAILABLE),
    (RequestCancelledError("cancelled"), grpc.StatusCode.CANCELLED),
    (ItemFailedError("conversations", "could not be computed (out of memory)", 0), grpc.StatusCode.RESOURCE_EXHAUSTED),
])
async def test_engine_errors_map_to_their_status(stub, fake, exc, code):
    fake.fail_with = exc
    error = await rpc_error(stub.ChatReward(pb.ChatRewardRequest(conversations=[user()])))
    assert error.code() == code and error.details() == str(exc)


async def test_unexpected_error_is_internal_with_request_id_and_no_traceback(stub, fake, caplog):
    fake.fail_with = RuntimeError("secret path /models/x exploded")
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="req-42"))
    with caplog.at_level(logging.ERROR, logger="rewardserve.service.errors"):
        error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id req-42)"
    assert "secret" not in str(error.trailing_metadata())
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert logged and "secret path" in str(logged[0].exc_info[1])


async def test_passed_deadline_is_deadline_exceeded_and_the_work_is_dropped(stub, fake):
    fake.hold.clear()  # nothing gets computed
    started = time.monotonic()
    error = await rpc_error(stub.Encode(pb.EncodeRequest(inputs=[TEXT]), timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = fake.calls[-1]
    # The engine got the caller's deadline as a monotonic instant...
    assert started < call.deadline < started + 0.4
    # ...and the queued work did not run: dropped at the deadline, or cancelled with the RPC.
    await asyncio.wait_for(call.finished.wait(), 5)
    assert call.outcome in ("deadline", "cancelled")


async def test_cancelled_call_cancels_the_engine_work(stub, fake):
    fake.hold.clear()
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT]))
    await asyncio.wait_for(fake.queued.wait(), 5)
    call.cancel()
    queued = fake.calls[-1]
    await asyncio.wait_for(queued.finished.wait(), 5)
    assert queued.outcome == "cancelled"
    assert (await call.code()) == grpc.StatusCode.CANCELLED
    fake.hold.set()
    assert len((await stub.Encode(pb.EncodeRequest(inputs=[TEXT]))).results) == 1  # server still fine
