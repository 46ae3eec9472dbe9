"""Data parallel behind one endpoint: a real server on two CPU replicas of the demo model. Health
stays SERVING while one replica lives and turns NOT_SERVING when none does; the replicas-alive
gauge follows; calls never hang."""
from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import generate_latest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.async_engine import AsyncEngine
from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig
from service_testlib import health_status, live_server
from test_service_metrics import free_port, sample

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Held:
    """A forward that waits at a gate, so its replica stays busy with one batch."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, *args):
        self.entered.set()
        self.gate.wait(20)
        return self.inner(*args)


class Dead:
    """A forward that fails the way a lost GPU does (the replica's probe fails too)."""

    def __init__(self, _inner):
        pass

    def __call__(self, *args):
        raise RuntimeError("CUDA error: unspecified launch failure (injected)")


def request(n: int) -> pb.EncodeRequest:
    return pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5 + i] * (10 + i))) for i in range(n)])


async def wait_health(live, status: int) -> None:
    for _ in range(100):
        if await health_status(live.health) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {status}")


async def test_health_and_gauge_follow_the_live_replicas(demo_model_dir):
    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          parallel=ParallelConfig(data_parallel_size=2))
    engine = await asyncio.to_thread(AsyncEngine.from_config, config)
    async with live_server(engine, metrics_port=free_port()) as live:
        gauge = lambda: sample(generate_latest(live.server.metrics.registry).decode(),  # noqa: E731
                               "rewardserve_replicas_alive")
        assert await health_status(live.health) == SERVING and gauge() == 2
        held = []
        engine.core.wrap_forward(Dead, replica=0)
        engine.core.wrap_forward(lambda inner: held.append(Held(inner)) or held[-1], replica=1)
        first = asyncio.ensure_future(live.stub.Encode(request(3), timeout=30))
        await asyncio.to_thread(held[0].entered.wait, 10)  # replica 1 is busy (first went there, or via 0)
        second = asyncio.ensure_future(live.stub.Encode(request(2), timeout=30))  # the idle replica 0 takes it, dies
        while engine.stats().replicas_alive == 2:
            await asyncio.sleep(0.01)
        assert gauge() == 1 and await health_status(live.health) == SERVING
        held[0].gate.set()
        assert len((await first).results) == 3 and len((await second).results) == 2
        engine.core.wrap_forward(Dead, replica=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await live.stub.Encode(request(2), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "no replica left" in err.value.details()
        await wait_health(live, NOT_SERVING)
        assert gauge() == 0
