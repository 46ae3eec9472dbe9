"""EngineCore: what the offline Engine and the AsyncEngine share — the model, its runner, and
the rules that turn requests into WorkItems and computed items into results."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from rewardserve.engine import pooling, prefix, score
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError, InvalidInputError, preview
from rewardserve.engine.loader import Loaded, check_tensor_parallel, load, model_info
from rewardserve.engine.policy import PolicyTokenizers
from rewardserve.engine.prepare import Limits, WorkItem, check_count, prepare, resolve_max_chars
from rewardserve.engine.retemplate import Retemplater
from rewardserve.engine.replicas import replica_devices, replicate
from rewardserve.engine.reward import RewardResult, to_reward_result
from rewardserve.engine.prefix_cache import model_identity
from rewardserve.engine.runner import CacheSpec, ModelRunner
from rewardserve.engine.score import ScoreOutput, ScoreParams, ScorePlan
from rewardserve.engine.template_pool import TemplatePool
from rewardserve.engine.tokenizer import REQUEST_TEMPLATES_OFF, longest_token_chars
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, PoolingParams, PoolingTask,
                                      PoolingType)

TRUNCATION_SIDES = ("left", "right")
_MB = 1024 * 1024
_FLOAT_BYTES = 4  # results travel as float32


def result_bytes(item: WorkItem, hidden_size: int, num_labels: int) -> int:
    """About how many bytes one item's result takes: [rows, columns] float32 values (twice for
    classify tasks, which also return the logits)."""
    pooling = item.pooling
    rows = 1 if pooling.pooling_type == PoolingType.MEAN else len(item.positions)
    if pooling.uses_head:
        columns = len(pooling.returned_token_ids or ()) or num_labels
        return 2 * rows * columns * _FLOAT_BYTES
    return rows * (pooling.dimensions or hidden_size) * _FLOAT_BYTES


def _template_pool(config: EngineConfig) -> TemplatePool | None:
    """The request-template workers, when request templates are allowed (started on first use)."""
    m = config.model
    if not m.allow_request_chat_template:
        return None
    return TemplatePool(m.request_template_workers, m.request_template_timeout_ms / 1000,
                        m.request_template_max_chars, m.request_template_memory_mb * 1024 * 1024)


def make_runner(config: EngineConfig, loaded: Loaded, model, device: torch.device, cls: type = ModelRunner,
                prefix_reuse: bool = False, **extra: Any) -> ModelRunner:
    """A ``cls`` runner for ``model`` on ``device`` as ``config`` asks (every replica and every
    tensor-parallel rank builds its runner here, so their compiles and graphs match)."""
    head_dtype = None if config.model.head_dtype == "model" else torch.float32
    speed = config.runner.for_device(device.type)  # compile and graphs: on for CUDA
    return cls(model, device, loaded.backend, head_dtype,
               compile=speed.compile, cuda_graphs=speed.cuda_graphs,
               max_tokens=config.scheduler.max_num_batched_tokens,
               max_seq_len=loaded.max_model_len,
               graph_max_tokens=config.runner.cuda_graph_max_tokens,
               graph_max_seqs=config.runner.cuda_graph_max_seqs,
               compile_warmup=config.runner.warmup_batches(config.scheduler.max_num_batched_tokens),
               prefix_reuse=prefix_reuse, **extra)


def _start_tensor_parallel(config: EngineConfig):
    """The tensor-parallel group's rank processes (None without tensor parallelism), started
    once the checkpoint and options are known to be servable that way."""
    parallel = config.parallel
    if parallel.tensor_parallel_size == 1:
        return None
    check_tensor_parallel(config)
    if parallel.data_parallel_size > 1:  # D groups of T GPUs each
        from rewardserve.engine.remote_replica import check_devices

        check_devices(config)
    from rewardserve.engine.tensor_parallel import TensorParallelGroup

    return TensorParallelGroup(config)


def _start_remote(config: EngineConfig) -> list:
    """Data parallel over tensor-parallel groups: the leader processes of replicas 1..D-1
    (``remote_replica.RemoteRunner``; none otherwise)."""
    if config.parallel.tensor_parallel_size == 1 or config.parallel.data_parallel_size == 1:
        return []
    from rewardserve.engine.remote_replica import start_remote

    return start_remote(config)


class EngineCore:
    """Loads the model once; turns requests into WorkItems and outputs into results."""

    def __init__(self, config: EngineConfig):
        self.config = config
        # Tensor parallel: ranks 1..N-1 start and load their shards while this process loads rank 0's;
        # with data parallel too, replicas 1..D-1 are leader processes, each with its own group
        # (engine/remote_replica.py), loading meanwhile as well.
        self.tensor_parallel = _start_tensor_parallel(config)
        self.remote: list = []
        try:
            self.remote = _start_remote(config)
            self.loaded = load(config, self.tensor_parallel.shard if self.tensor_parallel else None)
            if self.tensor_parallel:
                self.tensor_parallel.connect(self.loaded.model, self.loaded.device)
            for replica in self.remote:
                replica.connect()
        except BaseException:
            self._close_parallel()
            raise
        self.traits = self.loaded.model.traits
        self.tokenizer = self.loaded.tokenizer
        self.server_params = pooling.server_params(config.model.pooler_overrides())
        sched = config.scheduler
        longest = longest_token_chars(self.tokenizer) if self.tokenizer else 1
        self.limits = Limits(self.traits.vocab_size, self.loaded.max_model_len, self.traits.append_token_id,
                             max_items=sched.max_items_per_request,
                             max_chars=resolve_max_chars(sched.max_input_chars, self.loaded.max_model_len, longest))
        # Policy tokenizers load with the model, so the server needs no extra wiring for them.
        self.policies = PolicyTokenizers.load(config.model.policy_tokenizer, self.tokenizer)
        self.retemplater = Retemplater(self.policies)
        self.template_pool = _template_pool(config) if self.tokenizer else None
        if self.tokenizer:
            self.tokenizer.use_request_templates(self.template_pool, config.model.request_template_cache_size)
        self.info = dataclasses.replace(model_info(config.model.served_name(), self.loaded),
                                        policy_tokenizers=self.policies.infos())
        # Shared-prefix planning (engine/prefix.py): None when off or when this model cannot take it.
        # Tensor parallel: off (not yet proven with sharded heads; every rank runs whole prompts).
        self.prefix = None if self.tensor_parallel else prefix.planner_for(config.prefix, self.loaded.model,
                                                                            self.loaded.backend)
        # One runner per data-parallel replica (one without data parallelism); runners[0] is ``runner``.
        if self.remote:  # replica 0 here, the others in their leaders
            self.runners = [self._make_runner(self.loaded.model, self.loaded.device), *self.remote]
        else:
            devices = replica_devices(self.loaded.device, config.parallel.data_parallel_size)
            self.runners = replicate(self.loaded.model, devices, self._make_runner)
        self.runner = self.runners[0]

    def _make_runner(self, model, device: torch.device) -> ModelRunner:
        if self.tensor_parallel:
            from rewardserve.engine.tensor_parallel import TensorParallelRunner

            return make_runner(self.config, self.loaded, model, device, TensorParallelRunner,
                               group=self.tensor_parallel)
        return make_runner(self.config, self.loaded, model, device, prefix_reuse=self.prefix is not None,
                           prefix_cache=self._cache_spec())

    @property
    def cache_probe(self):
        """The prefix cache's probe for the scheduler (``BlockCache.probe``), or None: no cache,
        or several replicas (each has its own cache, and batches are cut on any replica's thread)."""
        if len(self.runners) != 1 or self.runner.cache is None:
            return None
        return self.runner.cache.probe

    def _cache_spec(self) -> CacheSpec | None:
        """The prefix cache each runner keeps (None: off). Block names start from the model's
        identity: its path and revision, dtype and quantisation (a block's keys depend on them)."""
        cfg = self.config.prefix
        if self.prefix is None or cfg.prefix_cache_gb == 0:
            return None
        model = self.config.model
        identity = model_identity(str(self.loaded.folder), model.revision, str(self.loaded.dtype), self.traits.architecture)
        return CacheSpec(cfg.prefix_cache_gb, cfg.prefix_block_tokens, identity)

    def plan(self, task: PoolingTask | None, params: PoolingParams | None) -> tuple[pooling.ResolvedPooling, PoolingParams]:
        """Resolve pooling: request > server --pooler-config > model traits (sentence-transformers
        config, then the architecture default). An unset task follows ``pooling.default_task``."""
        merged = pooling.merge(self.server_params, params)
        if merged.truncation_side not in (None, *TRUNCATION_SIDES):
            raise InvalidInputError("truncation.side", f"must be left or right, not {preview(merged.truncation_side)}")
        resolved = pooling.resolve(self.traits, task, merged)
        if resolved.uses_head:
            pooling.validate_returned_ids(resolved, self.traits.num_labels)
        return resolved, merged

    def prepare(self, inputs: Sequence[EncodeInput], task: PoolingTask | None,
                params: PoolingParams | None, field: str = "inputs") -> list[WorkItem]:
        """Validate and tokenize (CPU work; the async engine runs it on a thread pool).

        Conversations with a policy ``response`` or ``rendered`` form are re-templated first."""
        resolved, merged = self.plan(task, params)
        check_count(inputs, self.limits, field)  # before re-templating reads a single input
        inputs = self.retemplater.resolve_all(inputs, field)  # other inputs pass unchanged
        return self.check_result_size(prepare(inputs, resolved, merged, self.tokenizer, self.limits, field), field)

    def prepare_score(self, query: Any, documents: Sequence[Any], params: ScoreParams) -> ScorePlan:
        """Score: one WorkItem per (query, document) pair, or per text for embedding models."""
        return score.prepare_score(self, query, documents, params)

    @staticmethod
    def to_score(plan: ScorePlan) -> ScoreOutput:
        """Computed Score items → scores (input order, or the best ``top_n`` first)."""
        return score.to_score_output(plan)

    def prepare_chat(self, conversations: Sequence[ChatInput], params: PoolingParams | None) -> list[WorkItem]:
        """ChatReward: classify at the last token, plus every step tag for process RMs.

        The step tag follows the one override order (request > server > model), so a server's
        ``--pooler-config`` step_tag_id makes a PRM of a model without one. Policy responses
        and rendered conversations (``PolicyChat``) are re-templated first.
        """
        check_count(conversations, self.limits, "conversations")  # before any item is read
        self.check_request_templates(conversations)
        conversations = self.retemplater.resolve_all(conversations)
        step_tag = pooling.merge(self.server_params, params).step_tag_id
        step_tag = self.traits.step_tag_id if step_tag is None else step_tag
        if step_tag is None or not self.traits.num_labels:
            resolved, merged = self.plan(PoolingTask.CLASSIFY, params)
        else:  # STEP positions and the last token (the outcome score), in one pooled read
            step = PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=step_tag)
            resolved, merged = self.plan(PoolingTask.TOKEN_CLASSIFY, pooling.merge(params or PoolingParams(), step))
            resolved = dataclasses.replace(resolved, reads_last=True)
        return self.check_result_size(
            prepare(conversations, resolved, merged, self.tokenizer, self.limits, "conversations"), "conversations")

    def check_result_size(self, items: list[WorkItem], field: str) -> list[WorkItem]:
        """Refuse, before compute, a request whose result would not fit --max-result-mb (a reply
        the server could not send would be computed for nothing, and retried)."""
        limit_mb = self.config.scheduler.max_result_mb
        if limit_mb <= 0:
            return items
        total = 0
        for item in items:
            total += result_bytes(item, self.traits.hidden_size, self.traits.num_labels)
            if total > limit_mb * _MB:
                raise InvalidInputError(field, f"the result would hold about {total / _MB:.1f} MiB by this input, "
                                        f"more than the limit of {limit_mb} MiB (--max-result-mb, by default the "
                                        "server's --max-send-message-mb); send fewer or shorter inputs or fewer "
                                        "dimensions", item.index)
        return items

    def check_request_templates(self, conversations: Sequence[ChatInput]) -> None:
        """A request's own chat template is code: refused unless --allow-request-chat-template."""
        if self.template_pool is None and any(chat.chat_template for chat in conversations):
            raise InvalidInputError("chat_template", REQUEST_TEMPLATES_OFF)

    def close(self) -> None:
        """Stop the request-template workers, the tensor-parallel ranks and the other replicas'
        leaders (the model itself goes with the process)."""
        if self.template_pool is not None:
            self.template_pool.close()
        self._close_parallel()

    def _close_parallel(self) -> None:
        if self.remote:
            from rewardserve.engine.remote_replica import close_all

            close_all(self.remote)
        if self.tensor_parallel:
            self.tensor_parallel.close()

    @staticmethod
    def to_result(item: WorkItem) -> EncodeResult:
        data, logits = item.result
        return EncodeResult(index=item.index, data=data, num_tokens=item.num_tokens, truncated=item.truncated,
                            pooled_positions=list(item.positions), task=item.pooling.task, logits=logits,
                            queue_time_s=item.queue_time_s, compute_time_s=item.compute_time_s,
                            reused_tokens=item.reused_tokens)

    def to_reward(self, item: WorkItem) -> RewardResult:
        return to_reward_result(item, self.labels_for(item))

    def wrap_forward(self, wrapper, replica: int | None = None) -> None:
        """See ``ModelRunner.wrap_forward``: every replica's runner, or replica ``replica``'s only
        (a test seam, e.g. a forward that fails like a lost device)."""
        for index, runner in enumerate(self.runners):
            if replica is None or index == replica:
                runner.wrap_forward(wrapper)

    def labels_for(self, item: WorkItem) -> tuple[str, ...]:
        """Label names of the columns a result holds (token strings for LM-head columns)."""
        ids = item.pooling.returned_token_ids
        if not ids:
            return self.traits.labels or tuple(f"LABEL_{i}" for i in range(self.traits.num_labels))
        tok = self.tokenizer.hf if self.tokenizer else None
        return tuple(tok.convert_ids_to_tokens(i) if tok else str(i) for i in ids)
