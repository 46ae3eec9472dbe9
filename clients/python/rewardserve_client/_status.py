"""Read the server's retry delay from an error's trailing metadata.

The server sends it twice: as a ``google.rpc.RetryInfo`` inside the rich status
(``grpc-status-details-bin``) and as ``retry-after-ms``. The google.rpc messages live in
googleapis-common-protos, which this client does not depend on, so the two messages we need are
declared here in a private descriptor pool (private, so it never clashes with that package).
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after-ms"
RETRY_INFO_TYPE = "google.rpc.RetryInfo"

_F = descriptor_pb2.FieldDescriptorProto


def _declare_messages():
    """Declare google.rpc.Status and google.rpc.RetryInfo (wire-compatible subsets)."""
    pool = descriptor_pool.DescriptorPool()
    for dep in (any_pb2, duration_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="rewardserve_client/google_rpc_subset.proto", package="google.rpc", syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"])
    status = proto.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                     type_name=".google.protobuf.Any")
    retry = proto.message_type.add(name="RetryInfo")
    retry.field.add(name="retry_delay", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                    type_name=".google.protobuf.Duration")
    pool.Add(proto)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("google.rpc.Status")), \
        get(pool.FindMessageTypeByName("google.rpc.RetryInfo"))


Status, RetryInfo = _declare_messages()


def _delay_from_status(blob: bytes) -> Optional[float]:
    """The RetryInfo delay in seconds inside a serialized google.rpc.Status, if any."""
    status = Status()
    try:
        status.ParseFromString(blob)
    except Exception:  # a malformed detail must not hide the real error
        return None
    for detail in status.details:
        if detail.TypeName() == RETRY_INFO_TYPE:
            info = RetryInfo()
            info.ParseFromString(detail.value)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def _delay_from_header(value) -> Optional[float]:
    try:
        return max(0.0, float(value) / 1000.0)
    except (TypeError, ValueError):
        return None


def parse_retry_delay(trailing: Iterable[Tuple[str, object]]) -> Optional[float]:
    """The server's retry delay in seconds, or None when it gave none.

    When both forms are present the longer wins, so the client never comes back too early.
    """
    delays = []
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            delays.append(_delay_from_status(value))
        elif key == RETRY_AFTER_KEY:
            delays.append(_delay_from_header(value))
    found = [d for d in delays if d is not None]
    return max(found) if found else None
