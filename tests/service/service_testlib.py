"""Helpers shared by the service tests (a module, not conftest, so tests can import them).

``live_server`` is THE live-server harness: a real RewardServer on 127.0.0.1:0, around a given
engine (a fake) or the real engine loaded from an EngineConfig, warm, with a channel to it.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.engine.api import EngineAPI
from rewardserve.engine.config import EngineConfig
from rewardserve.service.config import ServeConfig, ServerConfig
from rewardserve.service.server import RewardServer


def local_config(**server: object) -> ServeConfig:
    """A ServeConfig listening on an ephemeral port of the loopback interface."""
    values = {"host": "127.0.0.1", "port": 0, "grace_period_s": 5.0, **server}
    return ServeConfig(server=ServerConfig(**values))


@dataclass
class LiveServer:
    """A started, warm server and one channel to it."""

    server: RewardServer
    channel: grpc.aio.Channel
    stub: pb_grpc.RewardServiceStub

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


@contextlib.asynccontextmanager
async def live_server(engine: EngineAPI | None = None, engine_config: EngineConfig | None = None, *,
                      drain_s: float = 0.5, **server: object) -> AsyncIterator[LiveServer]:
    """Serve ``engine`` (or the real engine of ``engine_config``) until the block ends, then drain.

    ``server`` holds ServerConfig fields (e.g. ``metrics_port``)."""
    config = local_config(**server)
    if engine_config is not None:
        config = dataclasses.replace(config, engine=engine_config)
    srv = RewardServer(config, engine=engine)
    await srv.start()
    try:
        await asyncio.wait_for(srv.wait_ready(), 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield LiveServer(srv, channel, pb_grpc.RewardServiceStub(channel))
    finally:
        await srv.drain(drain_s)


async def health_status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    """The server's answer to Health.Check for ``service``."""
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status
