"""What the trainer adapters share: prompt/completion conversion and one async client per loop."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence

from rewardserve_client.aio import AsyncRewardClient
from rewardserve_client.errors import invalid_argument


def as_messages(prompt: Any) -> List[Dict[str, str]]:
    """A prompt as chat messages: conversational prompts as they are, text as one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise invalid_argument(f"prompt: expected a text or a list of messages, got {type(prompt).__name__}")


def response_of(completion: Any, ids: Optional[Sequence[int]], policy_tokenizer: Optional[str]) -> Any:
    """The ``response`` of a conversation: the policy's token ids when the server knows its
    tokenizer (the reward model then reads exactly what was generated), else the text."""
    if ids is not None and policy_tokenizer is not None:
        return {"token_ids": list(ids), "tokenizer": policy_tokenizer}
    if isinstance(completion, str):
        return completion if policy_tokenizer is None else {"text": completion, "tokenizer": policy_tokenizer}
    raise invalid_argument(f"completion: expected a text, got {type(completion).__name__}")


class LoopClients:
    """One AsyncRewardClient per event loop: grpc.aio channels belong to the loop that made them,
    and trainers may call an async reward function from several loops (threads)."""

    def __init__(self, target: str, options: Mapping[str, Any]):
        self.target = target
        self.options = dict(options)
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRewardClient]" = (
            weakref.WeakKeyDictionary())

    def get(self) -> AsyncRewardClient:
        """The running loop's client (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = AsyncRewardClient(self.target, **self.options)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
