"""What the sync and async clients share: settings, channel options, metadata, request ids."""
from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import grpc

from rewardserve_client._retry import Retrier, RetryPolicy
from rewardserve_client.errors import REQUEST_ID_KEY, invalid_argument

DEFAULT_TIMEOUT = 30.0

# Token-level results (token_embed of long inputs) easily pass gRPC's 4 MiB default.
DEFAULT_MESSAGE_BYTES = 256 * 1024 * 1024

# The health-checked service: the server reports it NOT_SERVING while it loads and drains.
HEALTH_SERVICE_NAME = "rewardserve.v1.RewardService"

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
                   ("grpc.service_config_disable_resolution", 1))

# Read when a client is constructed, when no auth_token argument is given.
AUTH_TOKEN_ENV = "REWARDSERVE_AUTH_TOKEN"
AUTHORIZATION_KEY = "authorization"

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
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    return tuple((str(k).lower(), v) for k, v in items)


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


class ClientCore:
    """Settings common to RewardClient and AsyncRewardClient."""

    def __init__(self, target: str, *, timeout: Optional[float], max_retries: int,
                 initial_backoff: float, max_backoff: float, backoff_multiplier: float,
                 jitter: float, metadata: MetadataLike, auth_token: Optional[str],
                 clock: Callable[[], float], rng: Optional[random.Random]):
        self.target = target
        self.timeout = timeout
        policy = RetryPolicy(max_retries=max_retries, initial_backoff=initial_backoff,
                             max_backoff=max_backoff, backoff_multiplier=backoff_multiplier,
                             jitter=jitter)
        self._retrier = Retrier(policy, clock, rng or random.Random())
        extra = as_metadata(metadata)
        self._metadata = extra + auth_metadata(auth_token, extra)
        self.authenticated = any(key == AUTHORIZATION_KEY for key, _ in self._metadata)

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retrier.policy

    def describe(self, cls: str) -> str:
        """A repr that names the target and whether calls are authenticated, never the token."""
        return f"{cls}({self.target!r}, authenticated={self.authenticated})"

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _call_metadata(self, request_id: str) -> Tuple[Tuple[str, Any], ...]:
        return self._metadata + ((REQUEST_ID_KEY, request_id),)

    @staticmethod
    def _request_id(request_id: Optional[str]) -> str:
        # Chosen here rather than by the server so that every retry of one call, and an error
        # raised before the server answered, carry the same id.
        return request_id or uuid.uuid4().hex
