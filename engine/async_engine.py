"""AsyncEngine: the engine's face for servers. Many concurrent callers, one GPU thread.

Callers await ``encode`` / ``chat_reward``; tokenization runs in a thread pool, batching in the
scheduler, forward passes in the runner's thread. Nothing here blocks the event loop.
"""
from __future__ import annotations

from typing import Sequence

from rewardserve.engine.config import EngineConfig
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, ModelInfo, PoolingParams,
                                      PoolingTask)
from rewardserve.engine.reward import RewardResult


class AsyncEngine:
    """Asynchronous engine (interface; the implementation lands with the scheduler)."""

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Load the model (blocking: call it in a thread); ``start`` warms it up."""
        raise NotImplementedError

    @property
    def info(self) -> ModelInfo:
        """What is served."""
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:
        """True once started and warm, False again while draining."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start the GPU thread and warm up; returns when ready to serve."""
        raise NotImplementedError

    async def encode(self, inputs: Sequence[EncodeInput], task: PoolingTask | None = None,
                     params: PoolingParams | None = None, *, priority: int = 0,
                     deadline: float | None = None, request_id: str = "") -> list[EncodeResult]:
        """Run ``task`` on every input; results keep input order.

        ``deadline`` is a ``time.monotonic()`` instant. Raises InvalidInputError (names field and
        index), EngineOverloadedError, DeadlineExceededError, EngineUnavailableError; cancelling
        the awaiting task removes its queued work.
        """
        raise NotImplementedError

    async def chat_reward(self, conversations: Sequence[ChatInput], params: PoolingParams | None = None, *,
                          priority: int = 0, deadline: float | None = None,
                          request_id: str = "") -> list[RewardResult]:
        """Render each conversation with the chat template and score it (see RewardResult)."""
        raise NotImplementedError

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (up to ``grace_s``), stop the GPU thread."""
        raise NotImplementedError
