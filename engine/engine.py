"""Engine: the offline API, like vLLM's ``LLM.encode`` — the same work without a server."""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.core import EngineCore
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.reward import RewardResult
from rewardserve.engine.score import ScoreOutput, ScoreParams
from rewardserve.engine.types import ChatInput, EncodeResult, ModelInfo, PoolingParams, PoolingTask


class Engine:
    """Synchronous engine: load once, then ``encode`` lists of inputs.

    >>> engine = Engine(EngineConfig(model=ModelConfig(model="path/to/checkpoint")))
    >>> engine.encode(["a text", [1, 2, 3]], task="classify")[0].data
    """

    def __init__(self, config: EngineConfig | None = None, **model_options: Any):
        config = config or EngineConfig(model=ModelConfig(**model_options))
        self.config = config
        self.core = EngineCore(config)

    @classmethod
    def from_model(cls, model: str, *, device: str = "auto", **model_options: Any) -> "Engine":
        """Shortcut: ``Engine.from_model("dir", dtype="float32")``."""
        return cls(EngineConfig(model=ModelConfig(model=model, **model_options), runner=RunnerConfig(device=device),
                                scheduler=SchedulerConfig()))

    @property
    def info(self) -> ModelInfo:
        return self.core.info

    def encode(self, inputs: Sequence[Any], task: PoolingTask | str | None = None,
               params: PoolingParams | None = None, *, progress: bool = False) -> list[EncodeResult]:
        """Run ``task`` on every input (str, token id list, {"messages": [...]}, or input types).

        Raises InvalidInputError naming the field and index of the first bad input.
        """
        task = PoolingTask(task) if task else None
        items = self.core.prepare(list(inputs), task, params)  # plain forms are read (and checked) there
        self._run_all(items, progress)
        return [self.core.to_result(it) for it in items]

    def chat_reward(self, conversations: Sequence[Any], params: PoolingParams | None = None) -> list[RewardResult]:
        """Score conversations rendered with the chat template (raw reward, label and step scores)."""
        chats = [c if isinstance(c, ChatInput) else ChatInput(messages=tuple(c)) for c in conversations]
        items = self.core.prepare_chat(chats, params)
        self._run_all(items, False)
        return [self.core.to_reward(it) for it in items]

    def score(self, query: Any, documents: Sequence[Any], params: ScoreParams | None = None) -> ScoreOutput:
        """Score ``query`` against each document: a cross-encoder or reranker reads each pair,
        an embedding model gives cosine similarities (see engine/score.py).

        >>> engine.score("what is packing?", ["no padding", "a recipe"]).results[0].score
        """
        plan = self.core.prepare_score(query, list(documents), params or ScoreParams())
        self._run_all(plan.items, False)
        return self.core.to_score(plan)

    def _run_all(self, items: list[WorkItem], progress: bool) -> None:
        """Run every batch; batch i+1 is launched before batch i is collected, so the host's
        finishing and packing overlap the device's work."""
        bar = _progress(sum(it.num_tokens for it in items), progress)
        inflight = None
        for batch in self.batches(items):
            launched = (batch, self.core.launch(batch), time.monotonic())
            if inflight is not None:
                self._collect(*inflight, bar)
            inflight = launched
        if inflight is not None:
            self._collect(*inflight, bar)
        bar.close() if bar else None

    def _collect(self, batch: list[WorkItem], pending: Any, start: float, bar) -> None:
        self.core.collect(batch, pending)
        for item in batch:
            item.compute_time_s = time.monotonic() - start
        bar.update(sum(it.num_tokens for it in batch)) if bar else None

    def batches(self, items: list[WorkItem]) -> Iterator[list[WorkItem]]:
        """Cut items into packed batches by token budget and sequence count (input order)."""
        budget = self.config.scheduler.max_num_batched_tokens
        max_seqs = self.config.scheduler.max_num_seqs
        batch: list[WorkItem] = []
        tokens = 0
        for item in items:
            if batch and (tokens + item.num_tokens > budget or len(batch) >= max_seqs):
                yield batch
                batch, tokens = [], 0
            batch.append(item)
            tokens += item.num_tokens
        if batch:
            yield batch


def _progress(total_tokens: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_tokens, unit="tok", desc="encode", dynamic_ncols=True)
