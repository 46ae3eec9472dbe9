"""Server reflection, both protocols (grpc.reflection.v1 and v1alpha), with the contract's comments.

grpcio-reflection ships v1alpha only, and it serves descriptors copied from the ``_pb2`` modules,
which carry no source info, so ``grpcurl describe`` would show no comments. This servicer answers
both protocols from one descriptor index: the rewardserve files come from the committed
FileDescriptorSet built with source info (``rewardserve_client.v1.reward_service_descriptor_set``,
drift-checked by ``make proto-check``), the health and reflection files from their ``_pb2``
modules. v1 and v1alpha messages are the same on the wire (only the package name differs), so
the v1alpha message classes (de)serialise both, and the v1 file descriptor is derived from the
v1alpha one by renaming its package.

A file is answered together with its transitive dependencies (clients skip those they know).
"""
from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from rewardserve_client.v1.reward_service_descriptor_set import DESCRIPTOR_SET

V1ALPHA_SERVICE = rpb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1_SERVICE = V1ALPHA_SERVICE.replace(".v1alpha.", ".v1.")
SERVICE_NAMES = (V1_SERVICE, V1ALPHA_SERVICE)
_METHOD = "ServerReflectionInfo"


def _file_proto(descriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: the v1alpha file under the v1 package name."""
    alpha = _file_proto(rpb.DESCRIPTOR)
    old, new = f".{alpha.package}.", ".grpc.reflection.v1."
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(alpha)
    v1.name, v1.package = alpha.name.replace("v1alpha", "v1"), "grpc.reflection.v1"
    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # proto2: assigning "" would set it on scalars
                field.type_name = field.type_name.replace(old, new)
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return v1


class DescriptorIndex:
    """Serialized file descriptors by file name, and a pool to find the file of a symbol."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._pool = descriptor_pool.DescriptorPool()
        for proto in files:  # dependencies first (a FileDescriptorSet's order)
            if proto.name not in self._files:
                self._files[proto.name] = proto
                self._pool.Add(proto)

    @classmethod
    def default(cls) -> "DescriptorIndex":
        """The contract with comments, plus the health and reflection services."""
        contract = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET).file
        return cls([*contract, _file_proto(health_pb2.DESCRIPTOR), _file_proto(rpb.DESCRIPTOR),
                    _v1_reflection_file()])

    def file_of_symbol(self, symbol: str) -> str:
        """The name of the file that defines ``symbol`` (a message, enum, service or method)."""
        try:
            return self._pool.FindFileContainingSymbol(symbol).name
        except KeyError:
            # The pool finds services but not their methods (``pkg.Service.Method``).
            parent, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(parent)  # KeyError when unknown too
            if method not in service.methods_by_name:
                raise
            return service.file.name

    def with_dependencies(self, name: str) -> list[bytes]:
        """``name`` and every file it imports, transitively, serialized; KeyError when unknown."""
        order, todo = [], [name]
        while todo:
            current = todo.pop(0)
            if current not in order:
                order.append(current)
                todo.extend(self._files[current].dependency)
        return [self._files[n].SerializeToString() for n in order]

    def has_message(self, name: str) -> bool:
        try:
            self._pool.FindMessageTypeByName(name)
        except KeyError:
            return False
        return True


class ReflectionServicer:
    """Answers ServerReflectionInfo for v1 and v1alpha from one ``DescriptorIndex``."""

    def __init__(self, service_names: Iterable[str], index: DescriptorIndex | None = None) -> None:
        self._services = tuple(service_names)
        self._index = index or DescriptorIndex.default()

    async def info(self, requests: AsyncIterator[rpb.ServerReflectionRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            response = self.answer(request)
            response.valid_host = request.host
            response.original_request.CopyFrom(request)
            yield response

    def answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        """The answer to one reflection request (without the echoed request)."""
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                services = [rpb.ServiceResponse(name=name) for name in self._services]
                return rpb.ServerReflectionResponse(
                    list_services_response=rpb.ListServiceResponse(service=services))
            if kind == "file_by_filename":
                return self._files(request.file_by_filename)
            if kind == "file_containing_symbol":
                return self._files(self._index.file_of_symbol(request.file_containing_symbol))
            if kind == "all_extension_numbers_of_type":
                return self._extension_numbers(request.all_extension_numbers_of_type)
            if kind == "file_containing_extension":
                ext = request.file_containing_extension
                return _error(grpc.StatusCode.NOT_FOUND, f"no extension {ext.extension_number} of "
                              f"{ext.containing_type}: the contract declares no extensions")
        except KeyError:
            return _error(grpc.StatusCode.NOT_FOUND, f"{kind}: not found")
        return _error(grpc.StatusCode.INVALID_ARGUMENT, "message_request: not set")

    def _files(self, name: str) -> rpb.ServerReflectionResponse:
        files = rpb.FileDescriptorResponse(file_descriptor_proto=self._index.with_dependencies(name))
        return rpb.ServerReflectionResponse(file_descriptor_response=files)

    def _extension_numbers(self, type_name: str) -> rpb.ServerReflectionResponse:
        if not self._index.has_message(type_name):
            raise KeyError(type_name)
        numbers = rpb.ExtensionNumberResponse(base_type_name=type_name)
        return rpb.ServerReflectionResponse(all_extension_numbers_response=numbers)


def _error(code: grpc.StatusCode, message: str) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(
        error_response=rpb.ErrorResponse(error_code=code.value[0], error_message=message))


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` (which should
    include ``SERVICE_NAMES``)."""
    servicer = ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.info, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {_METHOD: handler}) for name in SERVICE_NAMES])
