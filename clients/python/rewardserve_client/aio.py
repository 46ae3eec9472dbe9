"""AsyncRewardClient: the asyncio (grpc.aio) twin of RewardClient, with the same surface."""
from __future__ import annotations

import asyncio
import random
import time
import warnings
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Sequence, Tuple

import grpc

from rewardserve_client import _requests, _results
from rewardserve_client._base import (DEFAULT_TIMEOUT, ClientCore, MetadataLike, merge_options,
                                      resolve_credentials)
from rewardserve_client._requests import Conversation, Group, Input
from rewardserve_client.client import REWARD_DEPRECATION
from rewardserve_client.stream import DEFAULT_MAX_IN_FLIGHT, AsyncRewardStream
from rewardserve_client.types import ChatRewardResponse, EncodeResponse, ModelInfo
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc


class AsyncRewardClient:
    """Asyncio client of a rewardserve server; arguments as :class:`RewardClient`.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop). Use
    ``async with``, or ``await client.close()``. ``sleep`` is a coroutine function here.
    """

    def __init__(self, target: str = "localhost:50051", *,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, max_retries: int = 3,
                 initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 backoff_multiplier: float = 2.0, jitter: float = 0.2,
                 credentials: Optional[grpc.ChannelCredentials] = None, secure: bool = False,
                 options: Optional[Sequence[Tuple[str, Any]]] = None,
                 metadata: MetadataLike = None, auth_token: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: Optional[random.Random] = None):
        self._core = ClientCore(target, timeout=timeout, max_retries=max_retries,
                                initial_backoff=initial_backoff, max_backoff=max_backoff,
                                backoff_multiplier=backoff_multiplier, jitter=jitter,
                                metadata=metadata, auth_token=auth_token, clock=clock, rng=rng)
        self._sleep = sleep
        creds = resolve_credentials(credentials, secure)
        opts = merge_options(options)
        self._channel = (grpc.aio.secure_channel(target, creds, options=opts) if creds
                         else grpc.aio.insecure_channel(target, options=opts))
        self._stub = pb_grpc.RewardServiceStub(self._channel)

    async def encode(self, inputs: Iterable[Input], task: Optional[str] = "classify", *,
                     pooling_type: Optional[str] = None, use_activation: Optional[bool] = None,
                     normalize: Optional[bool] = None, dimensions: Optional[int] = None,
                     step_tag_id: Optional[int] = None,
                     returned_token_ids: Optional[Sequence[int]] = None,
                     truncate_prompt_tokens: Optional[int] = None,
                     truncation_side: Optional[str] = None,
                     add_special_tokens: Optional[bool] = None, priority: int = 0,
                     request_id: Optional[str] = None,
                     timeout: Optional[float] = None) -> EncodeResponse:
        """Run a pooling task (Encode RPC); see :meth:`RewardClient.encode`."""
        rid = self._core._request_id(request_id)
        request = _requests.encode_request(
            inputs, task, pooling_type=pooling_type, use_activation=use_activation,
            normalize=normalize, dimensions=dimensions, step_tag_id=step_tag_id,
            returned_token_ids=returned_token_ids, truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side, add_special_tokens=add_special_tokens,
            priority=priority, request_id=rid)
        return _results.to_encode_response(await self._unary("Encode", request, rid, timeout))

    async def chat_reward(self, conversations: Iterable[Conversation] = (), *,
                          groups: Iterable[Group] = (),
                          chat_template: Optional[str] = None,
                          chat_template_kwargs: Optional[Mapping[str, Any]] = None,
                          add_generation_prompt: bool = False,
                          continue_final_message: bool = False,
                          truncate_prompt_tokens: Optional[int] = None,
                          truncation_side: Optional[str] = None,
                          step_tag_id: Optional[int] = None,
                          returned_token_ids: Optional[Sequence[int]] = None, priority: int = 0,
                          request_id: Optional[str] = None,
                          timeout: Optional[float] = None) -> ChatRewardResponse:
        """Score conversations (ChatReward RPC); see :meth:`RewardClient.chat_reward`."""
        rid = self._core._request_id(request_id)
        request = _requests.chat_reward_request(
            conversations, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
            step_tag_id=step_tag_id, returned_token_ids=returned_token_ids, priority=priority,
            request_id=rid, groups=groups)
        reply = await self._unary("ChatReward", request, rid, timeout)
        return _results.to_chat_reward_response(reply)

    def stream(self, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, request_id: Optional[str] = None,
               timeout: Optional[float] = None, **options: Any) -> AsyncRewardStream:
        """Open a StreamReward call: ``async with client.stream() as s: fut = await s.submit(conv)``.

        At most ``max_in_flight`` items are unanswered at a time (``submit`` waits). ``timeout``
        bounds the whole stream (default: none, a stream lives as long as the trainer). ``options``
        are ``chat_reward``'s template, truncation, step and ``priority`` arguments.
        """
        rid = self._core._request_id(request_id)
        request_options = _requests.stream_options(max_in_flight=max_in_flight, **options)
        return AsyncRewardStream(self._stub, request_options, max_in_flight=max_in_flight,
                                 timeout=timeout, metadata=self._core._call_metadata(rid),
                                 request_id=rid)

    async def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """Describe the served model (GetModelInfo RPC)."""
        rid = self._core._request_id(None)
        reply = await self._unary("GetModelInfo", pb.GetModelInfoRequest(), rid, timeout)
        return _results.to_model_info(reply)

    async def reward(self, inputs: Iterable[Input], *, pooling_type: Optional[str] = None,
                     use_activation: Optional[bool] = None, step_tag_id: Optional[int] = None,
                     returned_token_ids: Optional[Sequence[int]] = None,
                     truncate_prompt_tokens: Optional[int] = None,
                     truncation_side: Optional[str] = None, priority: int = 0,
                     request_id: Optional[str] = None,
                     timeout: Optional[float] = None) -> EncodeResponse:
        """Deprecated: use ``encode(inputs, task="token_classify")``. Calls the Reward RPC."""
        warnings.warn(REWARD_DEPRECATION, DeprecationWarning, stacklevel=2)
        rid = self._core._request_id(request_id)
        request = _requests.reward_request(
            inputs, pooling_type=pooling_type, use_activation=use_activation,
            step_tag_id=step_tag_id, returned_token_ids=returned_token_ids,
            truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
            priority=priority, request_id=rid)
        reply = await self._unary("Reward", request, rid, timeout)
        return _results.to_encode_response(reply, task=pb.POOLING_TASK_TOKEN_CLASSIFY)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _unary(self, method: str, request, request_id: str, timeout: Optional[float]):
        rpc = getattr(self._stub, method)
        metadata = self._core._call_metadata(request_id)

        async def attempt(time_left: Optional[float]):
            return await rpc(request, timeout=time_left, metadata=metadata)

        return await self._core._retrier.call_async(attempt, self._core._timeout(timeout),
                                                    request_id, self._sleep)
