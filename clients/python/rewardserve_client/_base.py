"""What the sync and async clients share: settings, channel options, metadata, request ids."""
from __future__ import annotations

import random
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import grpc

from rewardserve_client._retry import Retrier, RetryPolicy
from rewardserve_client.errors import REQUEST_ID_KEY

DEFAULT_TIMEOUT = 30.0

# Token-level results (token_embed of long inputs) easily pass gRPC's 4 MiB default.
DEFAULT_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_OPTIONS = (("grpc.max_receive_message_length", DEFAULT_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", DEFAULT_MESSAGE_BYTES))

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


class ClientCore:
    """Settings common to RewardClient and AsyncRewardClient."""

    def __init__(self, target: str, *, timeout: Optional[float], max_retries: int,
                 initial_backoff: float, max_backoff: float, backoff_multiplier: float,
                 jitter: float, metadata: MetadataLike, clock: Callable[[], float],
                 rng: Optional[random.Random]):
        self.target = target
        self.timeout = timeout
        policy = RetryPolicy(max_retries=max_retries, initial_backoff=initial_backoff,
                             max_backoff=max_backoff, backoff_multiplier=backoff_multiplier,
                             jitter=jitter)
        self._retrier = Retrier(policy, clock, rng or random.Random())
        self._metadata = as_metadata(metadata)

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retrier.policy

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _call_metadata(self, request_id: str) -> Tuple[Tuple[str, Any], ...]:
        return self._metadata + ((REQUEST_ID_KEY, request_id),)

    @staticmethod
    def _request_id(request_id: Optional[str]) -> str:
        # Chosen here rather than by the server so that every retry of one call, and an error
        # raised before the server answered, carry the same id.
        return request_id or uuid.uuid4().hex
