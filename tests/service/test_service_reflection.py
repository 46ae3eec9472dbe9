"""Server reflection v1 and v1alpha, serving the contract with its comments (source info)."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from rewardserve.service import reflection

SERVICE = "rewardserve.v1.RewardService"
CONTRACT = "rewardserve/v1/reward_service.proto"
PROTOCOLS = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")


async def ask(channel: grpc.aio.Channel, protocol: str, **request) -> rpb.ServerReflectionResponse:
    """One request over ``protocol``'s ServerReflectionInfo (the messages are the same on the wire)."""
    call = channel.stream_stream(f"/{protocol}/ServerReflectionInfo",
                                 request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=rpb.ServerReflectionResponse.FromString)()
    await call.write(rpb.ServerReflectionRequest(**request))
    answer = await call.read()
    await call.done_writing()
    return answer


def files(answer: rpb.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    return [descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answer.file_descriptor_response.file_descriptor_proto]


def comment_of(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    return next(loc.leading_comments for loc in file.source_code_info.location if list(loc.path) == path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_both_protocols_list_every_service(channel, protocol):
    answer = await ask(channel, protocol, list_services="")
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", *PROTOCOLS} <= names


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_contract_comes_with_its_comments_and_imports(channel, protocol):
    served = files(await ask(channel, protocol, file_containing_symbol=f"{SERVICE}.StreamReward"))
    contract = served[0]
    assert contract.name == CONTRACT
    assert "google/protobuf/struct.proto" in [f.name for f in served[1:]]
    service_index = [s.name for s in contract.service].index("RewardService")
    stream_index = [m.name for m in contract.service[service_index].method].index("StreamReward")
    # FileDescriptorProto field 6 is `service`, ServiceDescriptorProto field 2 is `method`.
    assert "ALREADY_EXISTS" in comment_of(contract, [6, service_index, 2, stream_index])
    assert contract.options.go_package.endswith(";rewardservev1")


async def test_the_v1_protocol_describes_itself(channel):
    served = files(await ask(channel, PROTOCOLS[0], file_containing_symbol=PROTOCOLS[0]))
    assert served[0].package == "grpc.reflection.v1"
    request_type = served[0].service[0].method[0].input_type
    assert request_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_unknown_symbols_and_extensions_are_not_found(channel):
    unknown = await ask(channel, PROTOCOLS[0], file_containing_symbol="no.such.Thing")
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    ext = rpb.ExtensionRequest(containing_type="rewardserve.v1.EncodeRequest", extension_number=100)
    extension = await ask(channel, PROTOCOLS[0], file_containing_extension=ext)
    assert extension.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    numbers = await ask(channel, PROTOCOLS[0], all_extension_numbers_of_type="rewardserve.v1.EncodeRequest")
    assert numbers.all_extension_numbers_response.base_type_name == "rewardserve.v1.EncodeRequest"


def test_the_served_descriptor_set_is_the_committed_one_with_source_info():
    index = reflection.DescriptorIndex.default()
    contract = descriptor_pb2.FileDescriptorProto.FromString(index.with_dependencies(CONTRACT)[0])
    assert len(contract.source_code_info.location) > 100  # every message and field documented


async def test_buf_curl_lists_the_methods_over_reflection_v1(server):
    buf = Path(sys.executable).with_name("buf")
    process = await asyncio.create_subprocess_exec(
        str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1",
        "--list-methods", f"http://127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert f"{SERVICE}/StreamReward" in out.decode().split()
