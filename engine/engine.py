"""Engine: the offline API, like vLLM's ``LLM.encode`` — the same work without a server."""
from __future__ import annotations

import uuid
from typing import Any, Sequence

from rewardserve.engine.api import BatchObserver
from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.core import EngineCore
from rewardserve.engine.errors import EngineError, ItemFailedError
from rewardserve.engine.pipeline import BatchLoop
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.scheduler import Request, Scheduler
from rewardserve.engine.reward import RewardResult
from rewardserve.engine.score import ScoreOutput, ScoreParams, name_failure
from rewardserve.engine.types import ChatInput, EncodeResult, ModelInfo, PoolingParams, PoolingTask


class Engine:
    """Synchronous engine: load once, then ``encode`` lists of inputs.

    >>> engine = Engine(EngineConfig(model=ModelConfig(model="path/to/checkpoint")))
    >>> engine.encode(["a text", [1, 2, 3]], task="classify")[0].data
    """

    def __init__(self, config: EngineConfig | None = None, **model_options: Any):
        config = config or EngineConfig(model=ModelConfig(**model_options))
        if config.parallel.data_parallel_size > 1:
            raise EngineError("--data-parallel-size is for `rewardserve serve` (one endpoint over several "
                              "devices); the offline Engine runs one replica")
        self.config = config
        self.core = EngineCore(config)
        # The same pipeline as the server's, on the caller's thread; the input list is the queue.
        self.scheduler = Scheduler(config.scheduler, bounded=False, prefix=self.core.prefix,
                                   cached=self.core.cache_probe)
        self.loop = BatchLoop(self.scheduler, self.core.runner)

    @classmethod
    def from_model(cls, model: str, *, device: str = "auto", tensor_parallel_size: int = 1,
                   **model_options: Any) -> "Engine":
        """Shortcut: ``Engine.from_model("dir", dtype="float32")``. As an entry point for library
        users it applies the process-wide torch settings (``torch_setup``; the compile cache under
        TORCHINDUCTOR_CACHE_DIR or $XDG_CACHE_HOME/rewardserve/inductor).

        ``tensor_parallel_size=N`` splits the model over N devices (N rank processes started
        here; ``close`` stops them)."""
        import os

        from rewardserve.engine import torch_setup

        torch_setup.configure(torch_setup.cache_dir_from(os.environ))
        return cls(EngineConfig(model=ModelConfig(model=model, **model_options), runner=RunnerConfig(device=device),
                                scheduler=SchedulerConfig(),
                                parallel=ParallelConfig(tensor_parallel_size=tensor_parallel_size)))

    def close(self) -> None:
        """Stop the engine's helper processes (tensor-parallel ranks, request-template workers).
        The engine cannot encode afterwards."""
        self.core.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def info(self) -> ModelInfo:
        return self.core.info

    def add_observer(self, observer: BatchObserver) -> None:
        """Call ``observer(items, compute_seconds)`` after every batch (as the AsyncEngine does)."""
        self.loop.observers.append(observer)

    def encode(self, inputs: Sequence[Any], task: PoolingTask | str | None = None,
               params: PoolingParams | None = None, *, progress: bool = False) -> list[EncodeResult]:
        """Run ``task`` on every input (str, token id list, {"messages": [...]}, or input types).

        Raises InvalidInputError naming the field and index of the first bad input.
        """
        task = PoolingTask(task) if task else None
        items = self.core.prepare(list(inputs), task, params)  # plain forms are read (and checked) there
        self._run(items, "inputs", progress)
        return [self.core.to_result(it) for it in items]

    def chat_reward(self, conversations: Sequence[Any], params: PoolingParams | None = None) -> list[RewardResult]:
        """Score conversations rendered with the chat template (raw reward, label and step scores)."""
        chats = [c if isinstance(c, ChatInput) else ChatInput(messages=tuple(c)) for c in conversations]
        items = self.core.prepare_chat(chats, params)
        self._run(items, "conversations", False)
        return [self.core.to_reward(it) for it in items]

    def score(self, query: Any, documents: Sequence[Any], params: ScoreParams | None = None) -> ScoreOutput:
        """Score ``query`` against each document: a cross-encoder or reranker reads each pair,
        an embedding model gives cosine similarities (see engine/score.py).

        >>> engine.score("what is packing?", ["no padding", "a recipe"]).results[0].score
        """
        plan = self.core.prepare_score(query, list(documents), params or ScoreParams())
        try:
            self._run(plan.items, "documents", False)
        except ItemFailedError as exc:
            raise name_failure(plan, exc) from None
        return self.core.to_score(plan)

    def _run(self, items: list[WorkItem], field: str, progress: bool) -> None:
        """Queue the items as one request and run the batch pipeline until they are computed;
        raises the request's error (e.g. ItemFailedError for an item that failed alone)."""
        request = Request(uuid.uuid4().hex, items, field_name=field)
        self.scheduler.submit(request)
        bar = _progress(request.num_tokens, progress)
        if bar is not None:
            self.loop.observers.append(lambda batch, _s: bar.update(sum(it.num_tokens for it in batch)))
        try:
            self.loop.run(block=False)
        finally:
            if bar is not None:
                self.loop.observers.pop()
                bar.close()
        if request.error is not None:
            raise request.error


def _progress(total_tokens: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_tokens, unit="tok", desc="encode", dynamic_ncols=True)
