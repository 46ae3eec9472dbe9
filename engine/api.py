"""The engine's typed API: what a server (or any other caller) may rely on. Torch-free to import.

``EngineAPI`` is the Protocol the gRPC service, its metrics and the test fake are written
against; ``AsyncEngine`` implements it. Results say what the engine resolved (``EncodeResult.task``,
``StepResult.position``), so a caller derives nothing. Every engine type such a caller needs is
re-exported here, so ``service/`` imports this one module and never torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from rewardserve.engine.errors import (DeadlineExceededError, EngineError, EngineOverloadedError,
                                       EngineUnavailableError, InvalidInputError, ItemError, ItemFailedError,
                                       RequestCancelledError, UnsupportedTaskError, preview)
from rewardserve.engine.reward import RewardResult, StepResult
from rewardserve.engine.score_types import ScoreMethod, ScoreOutput, ScoreParams, ScoreResult
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, ModelInfo, PolicyChat, PolicyText,
                                      PolicyTokenizerInfo, PoolingParams, PoolingTask, PoolingType, TextInput,
                                      TokensInput)

__all__ = [
    "EngineAPI", "EngineStats", "BatchItem", "BatchObserver",
    "ChatInput", "EncodeInput", "EncodeResult", "ModelInfo", "PolicyChat", "PolicyText", "PolicyTokenizerInfo",
    "PoolingParams", "PoolingTask", "PoolingType", "TextInput", "TokensInput", "RewardResult", "StepResult",
    "ScoreMethod", "ScoreOutput", "ScoreParams", "ScoreResult",
    "DeadlineExceededError", "EngineError", "EngineOverloadedError", "EngineUnavailableError",
    "InvalidInputError", "ItemError", "ItemFailedError", "RequestCancelledError", "UnsupportedTaskError", "preview",
]


@dataclass(frozen=True)
class EngineStats:
    """Queue depth now, and totals since start (for metrics)."""

    queued_requests: int
    queued_tokens: int
    num_rejected: int
    num_expired: int
    num_cancelled: int
    num_oom_splits: int
    num_failed_items: int
    replicas_alive: int = 1   # data-parallel replicas still serving (0: NOT_SERVING)
    replicas_total: int = 1
    # prefix cache (--prefix-cache-gb), every replica's summed; all 0 without one
    prefix_cache_queried_tokens: int = 0   # prompt tokens in whole blocks looked up (since start)
    prefix_cache_hit_tokens: int = 0       # of those, read from the cache instead of computed
    prefix_cache_evicted_blocks: int = 0   # blocks evicted for newer ones (since start)
    prefix_cache_used_bytes: int = 0       # now
    prefix_cache_capacity_bytes: int = 0


class BatchItem(Protocol):
    """What a batch observer may read about one sequence of a computed batch."""

    @property
    def num_tokens(self) -> int: ...

    queue_time_s: float
    reused_tokens: int  # tokens of its shared prompt not computed for it (0 with --no-prefix-reuse)


# observer(items of the batch, seconds from launch to results); called on the engine's GPU thread
BatchObserver = Callable[[Sequence[BatchItem], float], None]


@runtime_checkable
class EngineAPI(Protocol):
    """An asynchronous engine serving one model.

    Errors are the classes of ``rewardserve.engine.errors``: ``InvalidInputError`` (naming the
    field and item), ``EngineOverloadedError``, ``DeadlineExceededError``,
    ``EngineUnavailableError`` (not started, warming up, draining), ``ItemFailedError``.
    ``deadline`` is a ``time.monotonic()`` instant.
    """

    @property
    def info(self) -> ModelInfo:
        """What is served."""

    @property
    def is_ready(self) -> bool:
        """True once started and warm, False again while draining or once no replica is left."""

    async def start(self) -> None:
        """Warm up; serve from then on."""

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (up to ``grace_s``), stop."""

    async def encode(self, inputs: Sequence[EncodeInput], task: PoolingTask | None = None,
                     params: PoolingParams | None = None, *, priority: int = 0,
                     deadline: float | None = None, request_id: str = "") -> list[EncodeResult]:
        """Run ``task`` (None: the engine's default for the configured pooling) on every input."""

    async def chat_reward(self, conversations: Sequence[ChatInput], params: PoolingParams | None = None, *,
                          priority: int = 0, deadline: float | None = None,
                          request_id: str = "") -> list[RewardResult]:
        """Render each conversation with the chat template and score it."""

    async def score(self, query: TextInput | TokensInput, documents: Sequence[TextInput | TokensInput],
                    params: ScoreParams | None = None, *, priority: int = 0, deadline: float | None = None,
                    request_id: str = "") -> ScoreOutput:
        """Score ``query`` against each document (cross-encoder, decoder reranker or embedding
        cosine, as the served model allows); errors name ``query`` or ``documents[i]``."""

    def stats(self) -> EngineStats:
        """Queue depth and fault counters (cheap; safe from any thread)."""

    def add_observer(self, observer: BatchObserver) -> None:
        """Call ``observer(items, compute_seconds)`` after every batch."""
