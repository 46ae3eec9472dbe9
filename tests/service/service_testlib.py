"""Helpers shared by the service tests (a module, not conftest, so tests can import them)."""
from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewardserve.service.config import ServeConfig, ServerConfig


def local_config(**server: object) -> ServeConfig:
    """A ServeConfig listening on an ephemeral port of the loopback interface."""
    values = {"host": "127.0.0.1", "port": 0, "grace_period_s": 5.0, **server}
    return ServeConfig(server=ServerConfig(**values))


async def health_status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    """The server's answer to Health.Check for ``service``."""
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status
