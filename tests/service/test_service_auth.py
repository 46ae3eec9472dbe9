"""Who may call: bearer tokens from --auth-token-file (reloadable) and mTLS allowed subjects."""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from fake_engine import FakeEngine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.auth import AuthFileError, TokenFile, bearer_token, read_tokens
from rewardserve.service.server import RewardServer
from service_testlib import local_config

TOKEN = "s3cret-token-for-trainers"
OTHER = "another-accepted-token"
INFO = pb.GetModelInfoRequest()


def token_file(folder: Path, *tokens: str) -> Path:
    path = folder / "tokens"
    path.write_text("# rewardserve tokens\n\n" + "\n".join(tokens) + "\n")
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def call_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_no_or_wrong_token_is_unauthenticated_the_right_one_is_served_and_health_stays_open(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config = local_config(auth_token_file=str(token_file(tmp_path, TOKEN, OTHER)))
    async with RewardServer(config, engine=FakeEngine()) as server:
        await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            missing = await call_error(stub.GetModelInfo(INFO, timeout=5))
            wrong = await call_error(stub.GetModelInfo(INFO, timeout=5, metadata=bearer(TOKEN[:-1])))
            not_bearer = await call_error(stub.GetModelInfo(INFO, timeout=5, metadata=(("authorization", TOKEN),)))
            for error in (missing, wrong, not_bearer):
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                # One message for every failure: it does not hint at which tokens exist.
                assert error.details() == missing.details() and TOKEN not in error.details()
            assert (await stub.GetModelInfo(INFO, timeout=5, metadata=bearer(TOKEN))).model == "fake-reward"
            assert (await stub.GetModelInfo(INFO, timeout=5, metadata=(("authorization", f"bearer {OTHER}"),))).model
            # Streams are checked too; health is open for probes (no token).
            stream = stub.StreamReward(iter([pb.StreamRewardRequest()]), timeout=5)
            assert await stream.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
                health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            assert await reflect.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text and OTHER not in caplog.text
    assert "2 bearer token(s) accepted" in caplog.text


async def test_token_file_reload_takes_new_tokens_and_keeps_old_ones_when_the_file_is_bad(tmp_path, caplog):
    path = token_file(tmp_path, TOKEN)
    async with RewardServer(local_config(auth_token_file=str(path)), engine=FakeEngine()) as server:
        await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            token_file(tmp_path, OTHER)
            assert (await stub.GetModelInfo(INFO, timeout=5, metadata=bearer(TOKEN))).model  # not re-read yet
            server.reload_auth()  # what SIGHUP does (tests/service/test_service_mesh.py sends a real one)
            assert (await call_error(stub.GetModelInfo(INFO, timeout=5, metadata=bearer(TOKEN)))).code() == \
                grpc.StatusCode.UNAUTHENTICATED
            assert (await stub.GetModelInfo(INFO, timeout=5, metadata=bearer(OTHER))).model
            path.write_text("# emptied by mistake\n")
            server.reload_auth()
            assert (await stub.GetModelInfo(INFO, timeout=5, metadata=bearer(OTHER))).model
    assert "holds no token; keeping the 1 token(s) accepted before" in caplog.text
    assert OTHER not in caplog.text


def test_token_files_skip_comments_and_blanks_and_refuse_unusable_files(tmp_path):
    assert read_tokens(token_file(tmp_path, " a ", "# b", "c")) == ["a", "c"]
    with pytest.raises(AuthFileError, match="holds no token"):
        TokenFile(token_file(tmp_path, "# only a comment"))
    with pytest.raises(AuthFileError, match="cannot be read"):
        TokenFile(tmp_path / "missing")
    (tmp_path / "spaced").write_text("two words\n")
    with pytest.raises(AuthFileError, match="token 1 holds a blank") as info:
        read_tokens(tmp_path / "spaced")
    assert "two words" not in str(info.value)  # errors never quote a token
    with pytest.raises(AuthFileError):
        RewardServer(local_config(auth_token_file=str(tmp_path / "missing")), engine=FakeEngine())


def test_bearer_token_reads_the_authorization_entry_only():
    assert bearer_token((("x-other", "Bearer no"), ("authorization", "Bearer  abc "))) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token((("authorization", "Bearer "),)) is None
    assert bearer_token(None) is None


# ------------------------------------------------------------------------- mTLS allowed subjects

def certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC certificate whose CN and DNS SAN are ``name`` (127.0.0.1 as an IP SAN)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


async def test_mutual_tls_serves_allowed_subjects_only_and_others_get_permission_denied(tmp_path):
    key, cert = certificate(tmp_path, "localhost")
    clients = {name: certificate(tmp_path, name) for name in ("trainer.ml", "intruder.ml")}
    bundle = tmp_path / "clients.pem"  # each self-signed client certificate is its own CA
    bundle.write_bytes(b"".join(c.read_bytes() for _k, c in clients.values()))
    config = local_config(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(bundle),
                          tls_allowed_subjects=("trainer.ml",))
    async with RewardServer(config, engine=FakeEngine()) as server:
        await server.wait_ready()
        codes = {}
        for name, (client_key, client_cert) in clients.items():
            credentials = grpc.ssl_channel_credentials(cert.read_bytes(), client_key.read_bytes(),
                                                       client_cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                try:
                    await pb_grpc.RewardServiceStub(channel).GetModelInfo(INFO, timeout=5)
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    codes[name] = error.code()
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes are never refused
    assert codes == {"trainer.ml": grpc.StatusCode.OK, "intruder.ml": grpc.StatusCode.PERMISSION_DENIED}


def test_allowed_subjects_need_client_certificates():
    with pytest.raises(ValueError, match="--tls-allowed-subjects needs --tls-client-ca"):
        local_config(tls_allowed_subjects=("trainer",))
