"""Errors raised by the rewardserve clients.

Every failed call raises a :class:`RewardServeError` (a plain ``Exception``, deliberately not a
``grpc.RpcError``: gRPC's errors expose ``code()`` as a method, ours expose ``code`` as an
attribute, and mixing the two would break ``except grpc.RpcError`` handlers that call it).
The original gRPC error is kept as ``__cause__``. Subclasses name the status codes callers
usually handle; any other code raises the base class.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Type

import grpc

from rewardserve_client._status import parse_retry_delay

REQUEST_ID_KEY = "x-request-id"

Metadata = Sequence[Tuple[str, object]]


class RewardServeError(Exception):
    """A call failed.

    Attributes:
        code: the ``grpc.StatusCode``.
        details: the server's message (names the field and item index for bad input).
        request_id: the request id (the server's, else the one this client sent), for logs.
        retry_delay: seconds the server asked callers to wait before retrying, or None.
        trailing_metadata: the reply's trailing metadata, as (key, value) pairs.
        item_id: the StreamReward item this error is about; None for a whole call or stream.
    """

    item_id: Optional[str] = None

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str = "",
                 retry_delay: Optional[float] = None, trailing_metadata: Metadata = ()):
        self.code = code
        self.details = details
        self.request_id = request_id
        self.retry_delay = retry_delay
        self.trailing_metadata = tuple(trailing_metadata)
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"{self.code.name}: {self.details}"
        return f"{text} (request id {self.request_id})" if self.request_id else text


class InvalidArgumentError(RewardServeError, ValueError):
    """INVALID_ARGUMENT: the request is wrong; retrying it cannot help.

    Raised by the server, or by the client itself before sending anything (see
    :func:`invalid_argument`); ``details`` names the parameter or field and the item. Also a
    ``ValueError``, so handlers written for the client's earlier plain ``ValueError`` still work.
    """


class ResourceExhaustedError(RewardServeError):
    """RESOURCE_EXHAUSTED: the server is overloaded; ``retry_delay`` says when to come back."""


class DeadlineExceededError(RewardServeError):
    """DEADLINE_EXCEEDED: the call's deadline passed; the server dropped the work."""


class UnavailableError(RewardServeError):
    """UNAVAILABLE: the server is not reachable, not ready yet, or draining."""


class InternalError(RewardServeError):
    """INTERNAL: a server bug; quote ``request_id`` when reporting it."""


class CallCancelledError(RewardServeError):
    """CANCELLED: the call was cancelled."""


def invalid_argument(details: str) -> InvalidArgumentError:
    """A refusal by the client itself (nothing was sent): ``details`` starts with the parameter
    and item, e.g. ``"task: unknown value 'clasify'; expected one of: ..."``."""
    return InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, details)


_BY_CODE: Dict[grpc.StatusCode, Type[RewardServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
}


def _metadata_value(metadata: Optional[Metadata], key: str) -> str:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return ""


def _safe(call, name: str):
    """Read a grpc.Call accessor; errors raised before a call existed may lack some."""
    try:
        return getattr(call, name)()
    except Exception:
        return None


def from_rpc_error(exc: grpc.RpcError, sent_request_id: str = "") -> RewardServeError:
    """Translate a sync or aio gRPC error into the matching :class:`RewardServeError`."""
    code = _safe(exc, "code") or grpc.StatusCode.UNKNOWN
    trailing = _safe(exc, "trailing_metadata") or ()
    request_id = (_metadata_value(_safe(exc, "initial_metadata"), REQUEST_ID_KEY)
                  or _metadata_value(trailing, REQUEST_ID_KEY) or sent_request_id)
    cls = _BY_CODE.get(code, RewardServeError)
    return cls(code, _safe(exc, "details") or "", request_id, parse_retry_delay(trailing), trailing)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def from_item_error(code: int, message: str, item_id: str, request_id: str = "",
                    retry_after: float = 0.0) -> RewardServeError:
    """The error of one StreamReward item (an ``ItemError``), as the matching exception."""
    status = _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(status, RewardServeError)
    error = cls(status, f"item {item_id!r}: {message}", request_id, retry_after or None)
    error.item_id = item_id
    return error
