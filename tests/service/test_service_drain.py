"""The drain timeline, in order: NOT_SERVING at once → still serving for --drain-delay-s → new
calls UNAVAILABLE and idle streams ended UNAVAILABLE → in-flight calls finish within the grace
period → what is left ends UNAVAILABLE (never CANCELLED)."""
from __future__ import annotations

import asyncio

import grpc
from fake_engine import FakeEngine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.server import RewardServer
from service_testlib import health_status, local_config

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TEXT = pb.EncodeInput(text="hello")


def chat_item(item_id: str) -> pb.StreamItem:
    return pb.StreamItem(id=item_id, conversation=pb.Conversation(messages=[
        pb.ChatMessage(role="user", content="2+2?"), pb.ChatMessage(role="assistant", content="4")]))


async def test_health_goes_not_serving_at_once_while_new_calls_are_served_until_the_delay_ends():
    fake = FakeEngine()
    async with RewardServer(local_config(), engine=fake) as server:
        await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub, health = pb_grpc.RewardServiceStub(channel), health_pb2_grpc.HealthStub(channel)
            first = asyncio.create_task(server.drain(grace_s=5, delay_s=3600))
            assert await health_status(health) == NOT_SERVING
            # Within the delay, balancers that have not noticed yet still get answers.
            reply = await stub.Encode(pb.EncodeRequest(inputs=[TEXT]), timeout=5)
            assert reply.results and not first.done() and fake.shutdown_grace is None
            fake.hold.clear()
            fake.queued.clear()
            held = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="held"))  # keeps the port open
            await asyncio.wait_for(fake.queued.wait(), 5)
            second = asyncio.create_task(server.drain())  # a second signal cuts the delay short
            error = await _refused(stub)
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "draining" in error.details()
            fake.hold.set()
            assert (await held).request_id == "held"
            await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert fake.shutdown_grace is not None


async def _refused(stub: pb_grpc.RewardServiceStub) -> grpc.aio.AioRpcError:
    """Poll with GetModelInfo until the draining server refuses it."""
    while True:
        try:
            await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error
        await asyncio.sleep(0.01)


async def test_an_idle_stream_ends_unavailable_when_refusing_starts_not_when_the_grace_period_ends():
    fake = FakeEngine()
    server = RewardServer(local_config(grace_period_s=3600), engine=fake)
    await server.start()
    await server.wait_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        idle = stub.StreamReward()
        await idle.write(pb.StreamRewardRequest(items=[chat_item("done-before")]))
        assert (await idle.read()).id == "done-before"  # the stream is open, and now idle
        fake.hold.clear()
        fake.queued.clear()
        busy = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="busy"))  # holds the drain open
        await asyncio.wait_for(fake.queued.wait(), 5)
        drain = asyncio.create_task(server.drain())
        assert await idle.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in await idle.details()
        assert not drain.done() and not busy.done()  # the grace period is far from over
        fake.hold.set()
        assert (await busy).request_id == "busy"
        await asyncio.wait_for(drain, 10)


async def test_a_busy_stream_past_the_grace_period_ends_unavailable_not_cancelled():
    fake = FakeEngine()
    server = RewardServer(local_config(), engine=fake)
    await server.start()
    await server.wait_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        fake.hold.clear()  # never released
        stream = pb_grpc.RewardServiceStub(channel).StreamReward()
        await stream.write(pb.StreamRewardRequest(items=[chat_item("stuck")]))
        await asyncio.wait_for(fake.queued.wait(), 5)
        await asyncio.wait_for(server.drain(grace_s=0.2), 10)
        assert await stream.code() == grpc.StatusCode.UNAVAILABLE
        assert "grace period" in await stream.details()
    assert fake.calls[0].outcome == "cancelled"
