"""Transport options from ServerConfig: TLS (and mutual TLS) and message-size limits."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from fake_engine import FakeEngine
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.server import RewardServer
from service_testlib import local_config


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC key and a self-signed certificate for localhost / 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


async def test_tls_server_answers_tls_clients_only(tmp_path):
    key, cert = self_signed(tmp_path, "server")
    async with RewardServer(local_config(tls_cert=str(cert), tls_key=str(key)), engine=FakeEngine()) as server:
        await server.wait_ready()
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
            reply = await pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert reply.model == "fake-reward"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.RewardServiceStub(plain).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_reward_clients_speak_tls_with_given_credentials(tmp_path):
    from rewardserve_client import AsyncRewardClient

    key, cert = self_signed(tmp_path, "server")
    async with RewardServer(local_config(tls_cert=str(cert), tls_key=str(key)), engine=FakeEngine()) as server:
        await server.wait_ready()
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with AsyncRewardClient(f"localhost:{server.port}", credentials=credentials, timeout=5) as client:
            assert (await client.model_info()).model == "fake-reward"
        async with AsyncRewardClient(f"localhost:{server.port}", timeout=2, max_retries=0) as plain:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                await plain.model_info()


async def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path):
    key, cert = self_signed(tmp_path, "server")
    client_key, client_cert = self_signed(tmp_path, "client")
    config = local_config(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(client_cert))
    async with RewardServer(config, engine=FakeEngine()) as server:
        await server.wait_ready()
        target = f"localhost:{server.port}"
        with_cert = grpc.ssl_channel_credentials(cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            assert (await pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)).model
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(cert.read_bytes())) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.RewardServiceStub(anonymous).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)


async def test_requests_over_the_receive_limit_are_resource_exhausted():
    async with RewardServer(local_config(max_receive_message_mb=1), engine=FakeEngine()) as server:
        await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            big = pb.EncodeRequest(inputs=[pb.EncodeInput(text="x" * (2 * 1024 * 1024))])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(big, timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="small")]), timeout=5)).results
