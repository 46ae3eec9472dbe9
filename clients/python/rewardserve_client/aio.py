"""AsyncRewardClient: the asyncio (grpc.aio) client of rewardserve.v1, RewardClient's calls as coroutines."""
from __future__ import annotations

import asyncio
from typing import Any, Optional

import grpc

from rewardserve_client import _calls
from rewardserve_client._base import ClientBase
from rewardserve_client._calls import UnaryCall
from rewardserve_client.stream import AsyncRewardStream


class AsyncRewardClient(ClientBase):
    """Asyncio client of a rewardserve server; arguments as :class:`RewardClient`.

    Its calls are RewardClient's, defined once for both (same arguments, same defaults), as
    coroutines. Create it inside the event loop that uses it (grpc.aio channels belong to one
    loop). Use ``async with``, or ``await client.close()``. ``sleep`` is a coroutine function
    here (default ``asyncio.sleep``).
    """

    _flavour = grpc.aio
    _default_sleep = staticmethod(asyncio.sleep)

    encode = _calls.awaitable(_calls.encode)
    chat_reward = _calls.awaitable(_calls.chat_reward)
    model_info = _calls.awaitable(_calls.model_info)
    reward = _calls.awaitable(_calls.reward)
    score = _calls.awaitable(_calls.score)

    def stream(self, **options: Any) -> AsyncRewardStream:
        """Open a StreamReward call: ``async with client.stream() as s: fut = await s.submit(conv)``.

        At most ``max_in_flight`` (64) items are unanswered at a time (``submit`` waits).
        ``timeout`` bounds the whole stream (default: none, a stream lives as long as the
        trainer). Other ``options``: ``request_id`` and ``chat_reward``'s template, truncation,
        step and ``priority`` arguments. Not retried.
        """
        call = _calls.stream(**options)
        return AsyncRewardStream(self._stub, call.options, max_in_flight=call.max_in_flight,
                                 timeout=call.timeout,
                                 metadata=self._call_metadata(call.request_id),
                                 request_id=call.request_id)

    stream.__signature__ = _calls.method_signature(_calls.stream, AsyncRewardStream)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _run_unary(self, call: UnaryCall[Any]) -> Any:
        rpc = getattr(self._stub, call.method)
        metadata = self._call_metadata(call.request_id)

        async def attempt(time_left: Optional[float]):
            return await rpc(call.request, timeout=time_left, metadata=metadata)

        reply = await self._retrier.call_async(attempt, self._timeout_for(call.timeout),
                                               call.request_id, self._sleep)
        return self._reply(call, reply)
