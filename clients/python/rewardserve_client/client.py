"""RewardClient: the blocking Python client of rewardserve.v1."""
from __future__ import annotations

import inspect
import time
from typing import Any, Iterable, Iterator, Optional

import grpc

from rewardserve_client import _calls
from rewardserve_client._base import ClientBase
from rewardserve_client._calls import UnaryCall
from rewardserve_client.stream import ItemLike, stream_items
from rewardserve_client.types import StreamResult


class RewardClient(ClientBase):
    """Blocking client of a rewardserve server.

    Args:
        target: ``"host:port"`` of the server, or a multi-address target
            (``"ipv4:10.0.0.1:50051,10.0.0.2:50051"``, ``"dns:///rewardserve:50051"``): calls go
            round-robin to every address whose health check is SERVING (a draining or loading
            replica gets none). ``options=[("grpc.service_config", ...)]`` replaces that policy.
        timeout: default deadline of each call in seconds, retries included (None: no deadline).
        max_retries: retries after the first attempt, only on UNAVAILABLE and RESOURCE_EXHAUSTED.
        initial_backoff, max_backoff, backoff_multiplier, jitter: the exponential backoff
            (see :class:`rewardserve_client.RetryPolicy`); the server's retry delay is a floor.
        credentials: ``grpc.ChannelCredentials`` for TLS (e.g. ``grpc.ssl_channel_credentials``).
        secure: TLS with the system's root certificates when no ``credentials`` are given.
        options: gRPC channel options, passed through (they override our defaults).
        metadata: metadata sent with every call (e.g. ``{"x-team": "rl"}``).
        auth_token: sent as ``authorization: Bearer <token>`` with every call; when None, the
            ``REWARDSERVE_AUTH_TOKEN`` environment variable is read here, at construction (unless
            ``metadata`` has an ``authorization`` entry). Never shown in reprs or errors.
        clock, sleep, rng: time source, sleep function (default ``time.sleep``) and random
            source of the retry loop, replaceable for tests and simulations.

    Every method is defined once for both clients (``AsyncRewardClient`` has the same ones, as
    coroutines, with the same defaults). Failed calls, and arguments refused before sending,
    raise :class:`rewardserve_client.RewardServeError` subclasses. Use it as a context
    manager, or call :meth:`close`.
    """

    _flavour = grpc
    _default_sleep = staticmethod(time.sleep)

    encode = _calls.blocking(_calls.encode)
    chat_reward = _calls.blocking(_calls.chat_reward)
    model_info = _calls.blocking(_calls.model_info)
    reward = _calls.blocking(_calls.reward)
    score = _calls.blocking(_calls.score)

    def stream(self, items: Iterable[ItemLike], **options: Any) -> Iterator[StreamResult]:
        """Score ``(id, conversation[, group_id])`` items over one StreamReward call.

        Yields a :class:`StreamResult` per item in completion order; a failed item carries its
        error and the stream goes on. A malformed item raises InvalidArgumentError (after the
        answers to the items before it). ``options``: ``max_in_flight`` (64), ``request_id``,
        ``timeout`` (None: no deadline) and ``chat_reward``'s template, truncation,
        ``step_tag_id``/``returned_token_ids`` and ``priority`` arguments. Not retried.
        """
        call = _calls.stream(**options)
        return stream_items(self._stub, items, call.options, timeout=call.timeout,
                            metadata=self._call_metadata(call.request_id),
                            request_id=call.request_id)

    stream.__signature__ = _calls.method_signature(
        _calls.stream, Iterator[StreamResult],
        [inspect.Parameter("items", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           annotation=Iterable[ItemLike])])

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run_unary(self, call: UnaryCall[Any]) -> Any:
        rpc = getattr(self._stub, call.method)
        metadata = self._call_metadata(call.request_id)

        def attempt(time_left: Optional[float]):
            return rpc(call.request, timeout=time_left, metadata=metadata)

        reply = self._retrier.call(attempt, self._timeout_for(call.timeout), call.request_id,
                                   self._sleep)
        return self._reply(call, reply)
