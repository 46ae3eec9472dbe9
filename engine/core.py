"""EngineCore: what the offline Engine and the AsyncEngine share — plan, prepare, run, collect."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rewardserve.engine import pooling, score
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.loader import load, model_info
from rewardserve.engine.policy import PolicyTokenizers, ServedModelInfo
from rewardserve.engine.prepare import Limits, WorkItem, prepare
from rewardserve.engine.retemplate import Retemplater
from rewardserve.engine.reward import RewardResult, to_reward_result
from rewardserve.engine.runner import ModelRunner
from rewardserve.engine.score import ScoreOutput, ScoreParams, ScorePlan
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, PoolingParams, PoolingTask,
                                      PoolingType)

TRUNCATION_SIDES = ("left", "right")


class EngineCore:
    """Loads the model once; turns requests into WorkItems and outputs into results."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.loaded = load(config)
        self.traits = self.loaded.model.traits
        self.tokenizer = self.loaded.tokenizer
        self.server_params = pooling.server_params(config.model.pooler_overrides())
        self.limits = Limits(self.traits.vocab_size, self.loaded.max_model_len, self.traits.append_token_id)
        # Policy tokenizers load with the model, so the server needs no extra wiring for them.
        self.policies = PolicyTokenizers.load(config.model.policy_tokenizer, self.tokenizer)
        self.retemplater = Retemplater(self.policies)
        self.info = ServedModelInfo.extend(model_info(config.model.model, self.loaded),
                                           policy_tokenizers=self.policies.infos())
        head_dtype = None if config.model.head_dtype == "model" else torch.float32
        self.runner = ModelRunner(self.loaded.model, self.loaded.device, self.loaded.backend, head_dtype,
                                  compile=config.runner.compile, cuda_graphs=config.runner.cuda_graphs,
                                  max_tokens=config.scheduler.max_num_batched_tokens,
                                  max_seq_len=self.loaded.max_model_len)

    def plan(self, task: PoolingTask | None, params: PoolingParams | None) -> tuple[pooling.ResolvedPooling, PoolingParams]:
        """Resolve pooling: request > server --pooler-config > model traits."""
        merged = pooling.merge(self.server_params, params)
        if merged.truncation_side not in (None, *TRUNCATION_SIDES):
            raise InvalidInputError("truncation.side", f"must be left or right, not {merged.truncation_side!r}")
        resolved = pooling.resolve(self.traits, task, merged)
        if resolved.uses_head:
            pooling.validate_returned_ids(resolved, self.traits.num_labels)
        return resolved, merged

    def prepare(self, inputs: Sequence[EncodeInput], task: PoolingTask | None,
                params: PoolingParams | None, field: str = "inputs") -> list[WorkItem]:
        """Validate and tokenize (CPU work; the async engine runs it on a thread pool).

        Conversations with a policy ``response`` or ``rendered`` form are re-templated first."""
        resolved, merged = self.plan(task, params)
        inputs = self.retemplater.resolve_all(inputs, field)  # other inputs pass unchanged
        return prepare(inputs, resolved, merged, self.tokenizer, self.limits, field)

    def prepare_score(self, query: Any, documents: Sequence[Any], params: ScoreParams) -> ScorePlan:
        """Score: one WorkItem per (query, document) pair, or per text for embedding models."""
        return score.prepare_score(self, query, documents, params)

    @staticmethod
    def to_score(plan: ScorePlan) -> ScoreOutput:
        """Computed Score items → scores (input order, or the best ``top_n`` first)."""
        return score.to_score_output(plan)

    def prepare_chat(self, conversations: Sequence[ChatInput], params: PoolingParams | None) -> list[WorkItem]:
        """ChatReward: classify at the last token, plus every step tag for process RMs.

        Policy responses and rendered conversations (``PolicyChat``) are re-templated first.
        """
        conversations = self.retemplater.resolve_all(conversations)
        step_tag = (params.step_tag_id if params and params.step_tag_id is not None else self.traits.step_tag_id)
        is_prm = step_tag is not None and self.traits.num_labels > 0
        task = PoolingTask.TOKEN_CLASSIFY if is_prm else PoolingTask.CLASSIFY
        base = params or PoolingParams()
        if is_prm:
            base = pooling.merge(base, PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=step_tag))
        items = self.prepare(conversations, task, base, field="conversations")
        for item in items:  # read the last token too: the outcome score of a PRM
            if is_prm:
                item.positions = sorted(set(item.positions) | {item.num_tokens - 1})
        return items

    @staticmethod
    def to_result(item: WorkItem) -> EncodeResult:
        data, logits = item.result
        return EncodeResult(index=item.index, data=data, num_tokens=item.num_tokens, truncated=item.truncated,
                            pooled_positions=list(item.positions), logits=logits,
                            queue_time_s=item.queue_time_s, compute_time_s=item.compute_time_s)

    def to_reward(self, item: WorkItem) -> RewardResult:
        flags = None
        if item.pooling.task == PoolingTask.TOKEN_CLASSIFY:
            flags = [item.token_ids[p] == item.pooling.step_tag_id for p in item.positions]
        return to_reward_result(self.to_result(item), self.labels_for(item), flags)

    def labels_for(self, item: WorkItem) -> tuple[str, ...]:
        """Label names of the columns a result holds (token strings for LM-head columns)."""
        ids = item.pooling.returned_token_ids
        if not ids:
            return self.traits.labels or tuple(f"LABEL_{i}" for i in range(self.traits.num_labels))
        tok = self.tokenizer.hf if self.tokenizer else None
        return tuple(tok.convert_ids_to_tokens(i) if tok else str(i) for i in ids)

    def run(self, items: list[WorkItem]) -> None:
        """Compute a batch of items in place (item.result = (data, logits))."""
        for item, out in zip(items, self.runner.execute(items)):
            item.result = out

    def launch(self, items: list[WorkItem]):
        """Queue a batch on the device without waiting; ``collect`` sets the results."""
        return self.runner.launch(items)

    def collect(self, items: list[WorkItem], pending) -> None:
        """Wait for a launched batch and set each item's result."""
        for item, out in zip(items, self.runner.collect(pending)):
            item.result = out
