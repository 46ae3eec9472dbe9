"""TRL: reward functions for ``GRPOTrainer(reward_funcs=[...])`` (and RLOO/Online-DPO-style callers).

    from rewardserve_client.integrations.trl import RewardServeRewardFunc
    trainer = GRPOTrainer(model=..., reward_funcs=[RewardServeRewardFunc("rm-host:50051")], ...)

TRL calls ``reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns)``
and wants one float per completion. The answer is a ``list[float | None]``: ``None`` marks an
item the server refused or failed (TRL ignores None for that function: the sample is not
silently given 0), and a warning names the item and the reason. A failure of the whole call
(server unreachable, deadline) raises.

Inputs follow TRL's own reward-model rule: conversational prompts are scored as chat
(prompt turns + the completion as the final assistant turn, rendered with the reward model's
template); plain-text prompts as the text ``prompt + completion``. With ``policy_tokenizer``
(a ``--policy-tokenizer`` NAME of the server) conversational completions travel as the policy's
``completion_ids``, so the reward model reads exactly the generated tokens, re-templated.
Items go over one StreamReward call, so a bad item fails alone.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, List, Optional, Sequence, Tuple

from rewardserve_client.client import RewardClient
from rewardserve_client.errors import RewardServeError, invalid_argument
from rewardserve_client.integrations._common import LoopClients, as_messages, response_of

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 120.0  # one reward call covers a whole generation batch


def build_items(prompts: Sequence[Any], completions: Sequence[Any],
                completion_ids: Optional[Sequence[Sequence[int]]] = None,
                policy_tokenizer: Optional[str] = None) -> List[Tuple[str, Any]]:
    """``(id, conversation)`` stream items, the id being the completion's position."""
    if len(prompts) != len(completions):
        raise invalid_argument(f"prompts: {len(prompts)} prompts but {len(completions)} completions")
    if completion_ids is not None and len(completion_ids) != len(completions):
        raise invalid_argument(f"completion_ids: {len(completion_ids)} completion_ids but "
                               f"{len(completions)} completions")
    return [(str(i), _conversation(p, c, completion_ids[i] if completion_ids is not None else None,
                                   policy_tokenizer))
            for i, (p, c) in enumerate(zip(prompts, completions))]


def _conversation(prompt: Any, completion: Any, ids: Optional[Sequence[int]], policy: Optional[str]) -> Any:
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"rendered": {"text": prompt + completion}}  # TRL scores prompt + completion as text
    messages = as_messages(prompt)
    if isinstance(completion, str):
        return {"messages": messages, "response": response_of(completion, ids, policy)}
    turns = as_messages(completion)
    if len(turns) == 1 and turns[0].get("role") == "assistant":
        return {"messages": messages, "response": response_of(turns[0].get("content", ""), ids, policy)}
    return messages + turns  # multi-turn completions (tool calls): score the whole conversation


def _collect(count: int, answers) -> List[Optional[float]]:
    """Scores by item position; failed items are None, each logged with its reason."""
    scores: List[Optional[float]] = [None] * count
    for item_id, score, error in answers:
        if error is not None:
            logger.warning("rewardserve could not score completion %s: %s", item_id, error)
        else:
            scores[int(item_id)] = score
    return scores


class _Options:
    def __init__(self, target: str, name: str, policy_tokenizer: Optional[str], max_in_flight: int,
                 timeout: Optional[float], chat_options: dict):
        self.__name__ = name  # TRL logs each reward function under its __name__
        self.target = target
        self.policy_tokenizer = policy_tokenizer
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.chat_options = chat_options  # chat_reward's template/truncation arguments

    def _items(self, prompts, completions, completion_ids) -> List[Tuple[str, Any]]:
        return build_items(prompts, completions, completion_ids, self.policy_tokenizer)


class RewardServeRewardFunc(_Options):
    """A blocking TRL reward function scoring completions on a rewardserve server.

    Args:
        target: ``host:port`` of the server.
        name: the name TRL logs the reward under.
        policy_tokenizer: the server's name for the policy's tokenizer: completion token ids
            are then sent instead of text (exact tokens, re-templated server-side).
        max_in_flight: items unanswered at a time on the stream.
        timeout: deadline of one call, seconds.
        client_options: passed to :class:`RewardClient` (TLS, metadata, channel options).
        chat_options: ``chat_reward`` options for every item (``truncate_prompt_tokens``, ...).
    """

    def __init__(self, target: str = "localhost:50051", *, name: str = "rewardserve",
                 policy_tokenizer: Optional[str] = None, max_in_flight: int = 256,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, client_options: Optional[dict] = None,
                 **chat_options: Any):
        super().__init__(target, name, policy_tokenizer, max_in_flight, timeout, chat_options)
        self.client = RewardClient(target, timeout=timeout, **(client_options or {}))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Optional[Sequence[Sequence[int]]] = None, **_columns: Any) -> List[Optional[float]]:
        """One raw reward per completion (None where the server failed the item)."""
        items = self._items(prompts, completions, completion_ids)
        answers = ((r.id, r.result.score if r.ok else None, r.error)
                   for r in self.client.stream(items, max_in_flight=self.max_in_flight,
                                               timeout=self.timeout, **self.chat_options))
        return _collect(len(items), answers)

    def close(self) -> None:
        """Close the gRPC channel."""
        self.client.close()


class AsyncRewardServeRewardFunc(_Options):
    """The asyncio twin of :class:`RewardServeRewardFunc` (same arguments).

    ``await reward_func(prompts=..., completions=...)``; TRL runs async reward functions
    concurrently with its other reward functions. It counts as a coroutine function for
    ``asyncio`` (and ``inspect`` from Python 3.12); ``as_function()`` gives a plain ``async def``
    for TRL versions that ask ``inspect`` on older Pythons. One channel is kept per event loop.
    """

    def __init__(self, target: str = "localhost:50051", *, name: str = "rewardserve",
                 policy_tokenizer: Optional[str] = None, max_in_flight: int = 256,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, client_options: Optional[dict] = None,
                 **chat_options: Any):
        super().__init__(target, name, policy_tokenizer, max_in_flight, timeout, chat_options)
        self.clients = LoopClients(target, {"timeout": timeout, **(client_options or {})})
        _mark_coroutine_function(self)

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Optional[Sequence[Sequence[int]]] = None,
                       **_columns: Any) -> List[Optional[float]]:
        """One raw reward per completion (None where the server failed the item)."""
        items = self._items(prompts, completions, completion_ids)
        client = self.clients.get()
        async with client.stream(max_in_flight=self.max_in_flight, timeout=self.timeout,
                                 **self.chat_options) as stream:
            futures = [await stream.submit(conversation, id=item_id) for item_id, conversation in items]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in outcomes:  # a stream-level failure (not an item's) fails the whole call
            if isinstance(outcome, RewardServeError) and outcome.item_id is None:
                raise outcome
        return _collect(len(items), ((item_id, getattr(o, "score", None),
                                      o if isinstance(o, BaseException) else None)
                                     for (item_id, _), o in zip(items, outcomes)))

    def as_function(self):
        """A plain ``async def`` doing the same: ``inspect.iscoroutinefunction`` is true for it
        on every Python (for the object itself only from Python 3.12)."""
        async def reward(prompts, completions, completion_ids=None, **columns):
            return await self(prompts, completions, completion_ids, **columns)
        reward.__name__ = reward.__qualname__ = self.__name__
        return reward

    async def aclose(self) -> None:
        """Close the running loop's channel."""
        await self.clients.aclose()


def _mark_coroutine_function(obj: Any) -> None:
    """Make ``inspect.iscoroutinefunction(obj)`` / ``asyncio.iscoroutinefunction(obj)`` true."""
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
        obj._is_coroutine_marker = inspect._is_coroutine_mark  # what markcoroutinefunction sets
    obj._is_coroutine = asyncio.coroutines._is_coroutine  # asyncio's marker (3.10, 3.11)
