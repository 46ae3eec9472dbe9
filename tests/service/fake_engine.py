"""A fake engine for service tests: implements ``rewardserve.engine.api.EngineAPI``, no model,
fully controllable.

It keeps the engine's contract: refuses work before ``start()`` and after ``shutdown()``
(EngineUnavailableError), validates inputs the way the real engine does (token id ≥ vocab, too
long without truncation, a task the model cannot do, an unknown chat role) *before* queueing,
honours deadlines, and notices when the awaiting task is cancelled. Results are real torch
tensors whose values are derived from the inputs, so tests can check the conversion exactly.

Knobs: ``start_gate`` (start() waits for it), ``hold`` (queued calls wait for it; clear it to
keep calls in flight), ``fail_with`` (raise this from every encode/chat_reward after validation),
``calls`` (what was asked, with each call's outcome).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rewardserve.engine.api import (BatchObserver, ChatInput, DeadlineExceededError, EncodeResult, EngineStats,
                                    EngineUnavailableError, InvalidInputError, ModelInfo, PoolingParams, PoolingTask,
                                    PoolingType, RewardResult, ScoreMethod, ScoreOutput, ScoreParams, ScoreResult,
                                    StepResult, TextInput, TokensInput, UnsupportedTaskError)

ROLES = ("system", "user", "assistant")
HIDDEN = 4


def fake_info(**overrides: Any) -> ModelInfo:
    """A one-label reward model that cannot do TOKEN_EMBED."""
    values = dict(
        model="fake-reward", architecture="FakeForSequenceClassification",
        tasks=(PoolingTask.CLASSIFY, PoolingTask.TOKEN_CLASSIFY, PoolingTask.EMBED), num_labels=1,
        labels=("reward",), hidden_size=HIDDEN, vocab_size=400, max_model_len=64, dtype="float32",
        is_causal=True, has_chat_template=True, chat_template_sha256="ab" * 32, tokenizer_sha256="cd" * 32,
        default_pooling={PoolingTask.CLASSIFY: PoolingType.LAST, PoolingTask.TOKEN_CLASSIFY: PoolingType.ALL,
                         PoolingTask.EMBED: PoolingType.LAST})
    values.update(overrides)
    return ModelInfo(**values)


@dataclass
class Call:
    """One encode / chat_reward / score call as the engine received it."""

    method: str
    inputs: tuple
    task: PoolingTask | None
    params: PoolingParams | None
    priority: int
    deadline: float | None
    request_id: str
    outcome: str = "queued"  # then "done", "cancelled" or "deadline"
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class FakeEngine:
    """Stands in for rewardserve.engine.async_engine.AsyncEngine (an ``EngineAPI``)."""

    def __init__(self, info: ModelInfo | None = None) -> None:
        self.info = info or fake_info()
        self.calls: list[Call] = []
        self.fail_with: BaseException | None = None
        self.start_gate = asyncio.Event()
        self.start_gate.set()
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = False
        self.shutdown_grace: float | None = None
        self.queued = asyncio.Event()  # set whenever a call reaches the queue
        self.engine_stats = EngineStats(0, 0, 0, 0, 0, 0, 0)  # what stats() reports
        self.observers: list[BatchObserver] = []

    def stats(self) -> EngineStats:
        return self.engine_stats

    def add_observer(self, observer: BatchObserver) -> None:
        self.observers.append(observer)

    @property
    def is_ready(self) -> bool:
        return self.started and self.shutdown_grace is None

    async def start(self) -> None:
        await self.start_gate.wait()
        self.started = True

    async def shutdown(self, grace_s: float = 30.0) -> None:
        self.shutdown_grace = grace_s

    async def encode(self, inputs: Sequence[Any], task: PoolingTask | None = None,
                     params: PoolingParams | None = None, *, priority: int = 0,
                     deadline: float | None = None, request_id: str = "") -> list[EncodeResult]:
        task = task or PoolingTask.CLASSIFY
        self._admit(task, params)
        tokens = [self._tokens(item, i, params) for i, item in enumerate(inputs)]
        call = Call("encode", tuple(inputs), task, params, priority, deadline, request_id)
        await self._queue(call)
        return [_encode_result(i, ids, task, len(ids) < _length(item)) for i, (item, ids) in
                enumerate(zip(inputs, tokens))]

    async def chat_reward(self, conversations: Sequence[ChatInput], params: PoolingParams | None = None, *,
                          priority: int = 0, deadline: float | None = None,
                          request_id: str = "") -> list[RewardResult]:
        self._admit(PoolingTask.CLASSIFY, params)
        for i, conv in enumerate(conversations):
            for message in conv.messages:
                if message["role"] not in ROLES:
                    raise InvalidInputError("conversations", f"unknown role {message['role']!r}", i)
        call = Call("chat_reward", tuple(conversations), None, params, priority, deadline, request_id)
        await self._queue(call)
        step_tag = params.step_tag_id if params else None
        return [_reward_result(i, conv, step_tag) for i, conv in enumerate(conversations)]

    async def score(self, query: Any, documents: Sequence[Any], params: ScoreParams | None = None, *,
                    priority: int = 0, deadline: float | None = None, request_id: str = "") -> ScoreOutput:
        """A cross-encoder: score = 1 / (1 + |len(query) - len(document)|) in token ids."""
        self._admit(PoolingTask.CLASSIFY, None)
        params = params or ScoreParams()
        q = self._score_tokens(query, "query", None)
        docs = [self._score_tokens(d, "documents", i) for i, d in enumerate(documents)]
        call = Call("score", (query, *documents), None, None, priority, deadline, request_id)
        await self._queue(call)
        results = [ScoreResult(i, 1.0 / (1 + abs(len(q) - len(d))), None, len(q) + len(d), False)
                   for i, d in enumerate(docs)]
        if params.top_n:
            results = sorted(results, key=lambda r: (-r.score, r.index))[:params.top_n]
        return ScoreOutput(ScoreMethod.CROSS_ENCODER, results, sum(len(q) + len(d) for d in docs), len(docs))

    # ------------------------------------------------------------ the engine's contract

    def _score_tokens(self, item: Any, field_name: str, index: int | None) -> list[int]:
        ids = _token_ids(item)
        if not ids:
            raise InvalidInputError(field_name, "is empty (0 tokens)", index)
        bad = next((t for t in ids if t >= self.info.vocab_size), None)
        if bad is not None:
            raise InvalidInputError(field_name, f"token id {bad} is outside the vocabulary", index)
        return ids

    def _admit(self, task: PoolingTask, params: PoolingParams | None) -> None:
        if not self.is_ready:
            raise EngineUnavailableError("the engine is not started or is draining")
        if task not in self.info.tasks:
            raise UnsupportedTaskError("task", f"the served model cannot do {task.value}")

    def _tokens(self, item: Any, index: int, params: PoolingParams | None) -> list[int]:
        ids = _token_ids(item)
        for token in ids:
            if token >= self.info.vocab_size:
                raise InvalidInputError("inputs", f"token id {token} is not below the vocabulary size "
                                                  f"{self.info.vocab_size}", index)
        limit = params.truncate_prompt_tokens if params else None
        if limit is None and len(ids) > self.info.max_model_len:
            raise InvalidInputError("inputs", f"{len(ids)} tokens exceed max_model_len "
                                              f"{self.info.max_model_len}; set truncation", index)
        if limit is not None:
            ids = ids[-(self.info.max_model_len if limit == -1 else limit):]
        return ids

    async def _queue(self, call: Call) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(call)
        self.queued.set()
        try:
            await self.wait_for_turn(call)
        except asyncio.CancelledError:
            call.outcome = "cancelled"  # the real engine removes the queued work here
            raise
        finally:
            call.finished.set()
        call.outcome = "done"

    async def wait_for_turn(self, call: Call) -> None:
        """The seam for tests: when a queued call runs (here: once ``hold`` is set, or its deadline
        fails it). Subclasses override it to gate calls their own way."""
        timeout = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
        try:
            await asyncio.wait_for(self.hold.wait(), timeout)
        except asyncio.TimeoutError:
            call.outcome = "deadline"
            raise DeadlineExceededError("the deadline passed while the request was queued") from None


def _token_ids(item: Any) -> list[int]:
    if isinstance(item, TokensInput):
        return list(item.token_ids)
    if isinstance(item, TextInput):
        return [ord(ch) % 256 for ch in item.text]
    raise TypeError(f"unexpected input {item!r}")


def _length(item: Any) -> int:
    return len(_token_ids(item))


def _encode_result(index: int, ids: list[int], task: PoolingTask, truncated: bool) -> EncodeResult:
    """Values derived from the ids: classify → [len/10]; token tasks → one row per token."""
    n = len(ids)
    per_token = torch.tensor(ids, dtype=torch.float32).unsqueeze(1)
    data = {PoolingTask.CLASSIFY: torch.tensor([n / 10]),
            PoolingTask.TOKEN_CLASSIFY: per_token,
            PoolingTask.EMBED: torch.arange(HIDDEN, dtype=torch.float32) + n,
            PoolingTask.TOKEN_EMBED: per_token.repeat(1, HIDDEN)}[task]
    pooled = list(range(n)) if task in (PoolingTask.TOKEN_CLASSIFY, PoolingTask.TOKEN_EMBED) else [n - 1]
    return EncodeResult(index=index, data=data, num_tokens=n, truncated=truncated, pooled_positions=pooled,
                        task=task, queue_time_s=0.001 * (index + 1), compute_time_s=0.002)


def _reward_result(index: int, conv: ChatInput, step_tag: int | None) -> RewardResult:
    """score = number of characters of the conversation; steps at every step_tag character."""
    text = "".join(m["role"] + m["content"] for m in conv.messages)
    steps = tuple(StepResult(position=p, score=0.75, label_scores=(("neg", 0.25), ("pos", 0.75)))
                  for p, ch in enumerate(text) if step_tag is not None and ord(ch) == step_tag)
    return RewardResult(index=index, score=float(len(text)), label_scores=(("reward", 0.5),),
                        num_tokens=len(text), truncated=False, step_scores=steps,
                        queue_time_s=0.001 * (index + 1), compute_time_s=0.003)
