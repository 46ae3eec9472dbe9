"""Service fixtures: a real grpc.aio RewardServer on 127.0.0.1:0 around a FakeEngine, real channels.

Note: tests/ folders have no __init__.py, so test module names must be unique across tests/
(hence the ``test_service_`` prefix) and ``fake_engine`` is imported as a top-level module.
"""
from __future__ import annotations

import grpc
import pytest
from fake_engine import FakeEngine
from grpc_health.v1 import health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.server import RewardServer
from service_testlib import LiveServer, live_server


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def live(fake: FakeEngine):
    """A started, warm server around ``fake`` and a channel to it; drained at the end of the test."""
    async with live_server(fake) as running:
        yield running


@pytest.fixture
def server(live: LiveServer) -> RewardServer:
    return live.server


@pytest.fixture
def channel(live: LiveServer) -> grpc.aio.Channel:
    return live.channel


@pytest.fixture
def stub(channel) -> pb_grpc.RewardServiceStub:
    return pb_grpc.RewardServiceStub(channel)


@pytest.fixture
def health_stub(channel) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(channel)

