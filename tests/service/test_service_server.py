"""RewardServer's life cycle: health transitions, background model loading, drain, reflection."""
from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from fake_engine import FakeEngine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.server import RewardServer
from service_testlib import health_status, local_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "rewardserve.v1.RewardService"
TEXT = pb.EncodeInput(text="hello")


def open_channel(server: RewardServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


async def test_health_not_serving_until_warm_serving_then_not_serving_while_draining(fake):
    fake.start_gate.clear()  # warm-up in progress
    server = RewardServer(local_config(), engine=fake)
    await server.start()
    async with open_channel(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert await health_status(health) == NOT_SERVING
        assert await health_status(health, SERVICE) == NOT_SERVING
        error = await _rpc_error(pb_grpc.RewardServiceStub(channel).Encode(pb.EncodeRequest(inputs=[TEXT])))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == NOT_SERVING
        fake.start_gate.set()
        await server.wait_ready()
        assert (await watch.read()).status == SERVING
        assert await health_status(health) == SERVING
        drain = asyncio.create_task(server.drain(5))
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()  # an open Watch is an in-flight call: let the drain finish early
        await asyncio.wait_for(drain, 5)


async def test_model_loads_in_a_thread_while_the_server_already_listens():
    release, threads = threading.Event(), []

    def slow_loader(config):
        threads.append(threading.current_thread())
        release.wait(10)  # a blocking load: the event loop must keep answering meanwhile
        return FakeEngine()

    server = RewardServer(local_config(), loader=slow_loader)
    await server.start()
    async with open_channel(server) as channel:
        assert await health_status(health_pb2_grpc.HealthStub(channel)) == NOT_SERVING
        error = await _rpc_error(pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "loading" in error.details()
        release.set()
        await asyncio.wait_for(server.wait_ready(), 10)
        assert await health_status(health_pb2_grpc.HealthStub(channel)) == SERVING
        assert (await pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())).model
    assert threads[0] is not threading.main_thread()
    await server.drain(1)


async def test_failed_model_load_keeps_health_not_serving_and_is_reported():
    def broken_loader(config):
        raise OSError("no such model folder")

    server = RewardServer(local_config(), loader=broken_loader)
    await server.start()
    with pytest.raises(OSError, match="no such model"):
        await server.wait_ready()
    async with open_channel(server) as channel:
        assert await health_status(health_pb2_grpc.HealthStub(channel)) == NOT_SERVING
    await server.drain(0)


async def test_drain_finishes_in_flight_calls_refuses_new_ones_and_stops_the_engine(fake):
    async with RewardServer(local_config(), engine=fake) as server:
        await server.wait_ready()
        async with open_channel(server) as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            fake.hold.clear()
            in_flight = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="in-flight"))
            await asyncio.wait_for(fake.queued.wait(), 5)
            drain = asyncio.create_task(server.drain(5))
            refusal = await _until_refused(stub)
            assert "draining" in refusal.details()
            # While the in-flight call runs, the port stays open: health says NOT_SERVING.
            assert await health_status(health_pb2_grpc.HealthStub(channel)) == NOT_SERVING
            assert await health_status(health_pb2_grpc.HealthStub(channel), SERVICE) == NOT_SERVING
            assert fake.shutdown_grace is None  # the engine still runs the in-flight call
            fake.hold.set()
            assert (await in_flight).request_id == "in-flight"
            await asyncio.wait_for(drain, 5)
    assert fake.calls[0].outcome == "done"
    assert fake.shutdown_grace is not None and fake.shutdown_grace <= 5


async def test_drain_ends_calls_still_running_after_the_grace_period_unavailable(fake):
    server = RewardServer(local_config(), engine=fake)
    await server.start()
    await server.wait_ready()
    async with open_channel(server) as channel:
        fake.hold.clear()  # never released
        stuck = pb_grpc.RewardServiceStub(channel).Encode(pb.EncodeRequest(inputs=[TEXT]))
        await asyncio.wait_for(fake.queued.wait(), 5)
        await asyncio.wait_for(server.drain(0.2), 5)
        error = await _rpc_error(stuck)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # never CANCELLED: clients retry it
        assert "grace period" in error.details()
    assert fake.calls[0].outcome == "cancelled"  # the engine dropped the work


async def test_reflection_lists_the_services_and_serves_the_contract(server, channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in (await call.read()).list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
    files = (await call.read()).file_descriptor_response.file_descriptor_proto
    assert files  # what `buf curl` / grpcurl need to build requests
    await call.done_writing()


async def test_a_taken_port_is_an_error_not_a_shared_port(server):
    second = RewardServer(local_config(port=server.port), engine=FakeEngine())
    with pytest.raises(RuntimeError):
        await second.start()


async def _rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def _until_refused(stub: pb_grpc.RewardServiceStub) -> grpc.aio.AioRpcError:
    """Poll with calls that never queue until the draining server refuses new calls."""
    for _ in range(100):
        try:
            await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=1)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            return error
        await asyncio.sleep(0.02)
    raise AssertionError("the draining server kept accepting new calls")
