"""What the sync and async clients share: the constructor, channel options, metadata, auth."""
from __future__ import annotations

import json
import os
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from rewardserve_client._requests import check_timeout
from rewardserve_client._results import MalformedReply
from rewardserve_client._retry import Retrier, RetryPolicy
from rewardserve_client.errors import REQUEST_ID_KEY, InternalError, invalid_argument
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 30.0

# Token-level results (token_embed of long inputs) easily pass gRPC's 4 MiB default.
DEFAULT_MESSAGE_BYTES = 256 * 1024 * 1024

# The health-checked service (rewardserve.v1.RewardService): the server reports it NOT_SERVING
# while it loads and drains.
HEALTH_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name

# Every address of a multi-address target (``ipv4:A,B``, a ``dns:///`` name) gets calls in turn,
# and an address whose health Watch says NOT_SERVING gets none (gRPC client-side health checking,
# done by gRPC's core: no extra package). Deliberately no ``retryPolicy``: retries are the
# client's own (_retry.py), since gRPC's would ignore the server's RetryInfo and stop once headers
# arrived (the server sends x-request-id early); two layers would multiply the attempts.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": HEALTH_SERVICE_NAME},
})

DEFAULT_OPTIONS = (("grpc.max_receive_message_length", DEFAULT_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", DEFAULT_MESSAGE_BYTES),
                   ("grpc.service_config", SERVICE_CONFIG),
                   # A DNS TXT record must not swap in another service config (e.g. one with
                   # a retryPolicy): ours, or the caller's ``grpc.service_config``, is the one.
                   ("grpc.service_config_disable_resolution", 1),
                   # A restarted replica is used again within 2 s of listening, not after gRPC's
                   # backoff of up to 120 s (measured: down 20 s, back in use after 7.4 s).
                   ("grpc.max_reconnect_backoff_ms", 2000),
                   # A dns:/// name is resolved again at most every 2 s (gRPC: 30 s) when a
                   # connection fails or is aged out, so replaced or added replicas are found
                   # quickly (measured: a replica that moved address found after 2.0 s, not 30 s).
                   ("grpc.dns_min_time_between_resolutions_ms", 2000))

# Read when a client is constructed, when no auth_token argument is given.
AUTH_TOKEN_ENV = "REWARDSERVE_AUTH_TOKEN"
AUTHORIZATION_KEY = "authorization"

if TYPE_CHECKING:
    from rewardserve_client._calls import UnaryCall

R = TypeVar("R")

MetadataLike = Union[Mapping[str, Any], Sequence[Tuple[str, Any]], None]


def merge_options(options: Optional[Sequence[Tuple[str, Any]]]) -> list:
    """Our defaults overridden by the caller's channel options (theirs win on a clash)."""
    merged = dict(DEFAULT_OPTIONS)
    merged.update(dict(options or ()))
    return list(merged.items())


def resolve_credentials(credentials: Optional[grpc.ChannelCredentials],
                        secure: bool) -> Optional[grpc.ChannelCredentials]:
    """The channel credentials to use, or None for a plaintext channel."""
    if credentials is not None:
        return credentials
    return grpc.ssl_channel_credentials() if secure else None


def as_metadata(metadata: MetadataLike) -> Tuple[Tuple[str, Any], ...]:
    """Metadata as lower-cased ``(key, value)`` pairs (gRPC refuses upper-case keys)."""
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise invalid_argument(f"metadata[{i}]: expected a (key, value) pair with a str key; "
                                   "pass a dict or a list of pairs")
        pairs.append((item[0].lower(), item[1]))
    return tuple(pairs)


def _valid_token(token: str, source: str) -> str:
    # The message never quotes the token: it is a secret, and errors end up in logs.
    if not isinstance(token, str):
        raise invalid_argument(f"{source}: expected a str, got {type(token).__name__}")
    if not token or not all("!" <= c <= "~" for c in token):
        raise invalid_argument(f"{source}: must be non-empty printable ASCII without spaces")
    return token


def auth_metadata(auth_token: Optional[str], metadata: Tuple[Tuple[str, Any], ...]
                  ) -> Tuple[Tuple[str, Any], ...]:
    """The ``authorization: Bearer <token>`` entry to send, or none.

    The ``auth_token`` argument wins; without it ``REWARDSERVE_AUTH_TOKEN`` is read (now, when
    the client is built), unless ``metadata`` already carries an ``authorization`` entry.
    """
    has_authorization = any(key == AUTHORIZATION_KEY for key, _ in metadata)
    if auth_token is not None:
        if has_authorization:
            raise invalid_argument("auth_token: metadata already has an 'authorization' entry; "
                                   "set one of them")
        token = _valid_token(auth_token, "auth_token")
    else:
        env = os.environ.get(AUTH_TOKEN_ENV)
        if not env or has_authorization:
            return ()
        token = _valid_token(env, AUTH_TOKEN_ENV)
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


def open_channel(flavour: Any, target: str, credentials: Optional[grpc.ChannelCredentials],
                 secure: bool, options: Optional[Sequence[Tuple[str, Any]]]) -> Any:
    """A channel of ``flavour`` (the ``grpc`` or the ``grpc.aio`` module) with our options."""
    creds = resolve_credentials(credentials, secure)
    opts = merge_options(options)
    return (flavour.secure_channel(target, creds, options=opts) if creds
            else flavour.insecure_channel(target, options=opts))


class ClientBase:
    """What RewardClient and AsyncRewardClient share: one constructor, settings and metadata.

    A subclass names its gRPC flavour (``_flavour``: ``grpc`` or ``grpc.aio``) and its default
    sleep, and runs a :class:`~rewardserve_client._calls.UnaryCall` in ``_run_unary`` its own way
    (blocking, or as a coroutine); each call itself is defined once, in ``_calls``.
    """

    _flavour: Any
    _default_sleep: Callable[[float], Any]

    def __init__(self, target: str = "localhost:50051", *,
                 timeout: Optional[float] = DEFAULT_TIMEOUT,
                 max_retries: int = RetryPolicy.max_retries,
                 initial_backoff: float = RetryPolicy.initial_backoff,
                 max_backoff: float = RetryPolicy.max_backoff,
                 backoff_multiplier: float = RetryPolicy.backoff_multiplier,
                 jitter: float = RetryPolicy.jitter,
                 credentials: Optional[grpc.ChannelCredentials] = None, secure: bool = False,
                 options: Optional[Sequence[Tuple[str, Any]]] = None,
                 metadata: MetadataLike = None, auth_token: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Optional[Callable[[float], Any]] = None,
                 rng: Optional[random.Random] = None):
        """Arguments: see the class docstring."""
        if not isinstance(target, str) or not target:
            raise invalid_argument(f"target: expected 'host:port' or a gRPC target, got {target!r}")
        self.target = target
        self.timeout = check_timeout(timeout)
        self.retry_policy = RetryPolicy(max_retries=max_retries, initial_backoff=initial_backoff,
                                        max_backoff=max_backoff,
                                        backoff_multiplier=backoff_multiplier, jitter=jitter)
        self._retrier = Retrier(self.retry_policy, clock, rng or random.Random())
        extra = as_metadata(metadata)
        self._metadata = extra + auth_metadata(auth_token, extra)
        self._sleep = sleep or self._default_sleep
        self._channel = open_channel(self._flavour, target, credentials, secure, options)
        self._stub = pb_grpc.RewardServiceStub(self._channel)

    @property
    def authenticated(self) -> bool:
        """Whether calls carry an ``authorization`` entry (the token itself is not shown)."""
        return any(key == AUTHORIZATION_KEY for key, _ in self._metadata)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, authenticated={self.authenticated})"

    def _timeout_for(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _call_metadata(self, request_id: str) -> Tuple[Tuple[str, Any], ...]:
        return self._metadata + ((REQUEST_ID_KEY, request_id),)

    @staticmethod
    def _reply(call: "UnaryCall[R]", reply: Any) -> R:
        """The call's reply converted; one it cannot read raises InternalError (with its id)."""
        try:
            return call.convert(reply)
        except MalformedReply as exc:
            raise InternalError(grpc.StatusCode.INTERNAL, f"malformed reply from the server: {exc}",
                                call.request_id) from None
