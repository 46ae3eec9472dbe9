"""Turn rewardserve.v1 response messages into the dataclasses of ``rewardserve_client.types``."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

from rewardserve_client._requests import enum_name
from rewardserve_client.types import (ChatRewardResponse, ChatRewardResult, EncodeResponse,
                                      EncodeResult, ModelInfo, PolicyTokenizerInfo, StepScore,
                                      Timing, Usage)
from rewardserve_client.v1 import reward_service_pb2 as pb


class MalformedReply(ValueError):
    """A reply this client cannot read (a server or proxy bug); the client raises it as an
    InternalError carrying the call's request id."""


def to_array(tensor: pb.FloatTensor) -> np.ndarray:
    """A FloatTensor as a float32 array of its shape (an empty shape means a flat vector)."""
    values = np.array(tensor.values[:], dtype=np.float32)  # [:] copies to a list in one C call
    shape = tuple(tensor.shape) or (values.size,)
    if math.prod(shape) != values.size:
        raise MalformedReply(f"shape {list(shape)} but {values.size} values")
    return values.reshape(shape)


def to_usage(usage: pb.Usage) -> Usage:
    return Usage(prompt_tokens=usage.prompt_tokens, num_sequences=usage.num_sequences,
                 reused_tokens=usage.reused_tokens)


def to_timing(timing: pb.Timing) -> Timing:
    return Timing(queue_seconds=timing.queue_seconds, compute_seconds=timing.compute_seconds,
                  total_seconds=timing.total_seconds)


def task_name(value: int) -> str:
    return enum_name(pb.PoolingTask, "POOLING_TASK_", value)


def to_encode_result(result: pb.EncodeResult) -> EncodeResult:
    try:
        data = to_array(result.data)
    except MalformedReply as exc:
        raise MalformedReply(f"results[index {result.index}].data: {exc}") from None
    return EncodeResult(index=result.index, data=data,
                        num_tokens=result.num_tokens, truncated=result.truncated,
                        pooled_positions=list(result.pooled_positions), reused_tokens=result.reused_tokens)


def to_encode_response(reply, task: int = None) -> EncodeResponse:
    """An EncodeResponse (or the deprecated RewardResponse, whose task is token_classify)."""
    task = reply.task if task is None else task
    results = sorted((to_encode_result(r) for r in reply.results), key=lambda r: r.index)
    return EncodeResponse(request_id=reply.request_id, model=reply.model, task=task_name(task),
                          results=results, usage=to_usage(reply.usage),
                          timing=to_timing(reply.timing))


def to_label_scores(label_scores) -> Dict[str, float]:
    return {s.label: float(s.score) for s in label_scores}


def to_chat_reward_result(result: pb.ChatRewardResult) -> ChatRewardResult:
    steps = [StepScore(position=s.position, score=float(s.score),
                       label_scores=to_label_scores(s.label_scores)) for s in result.step_scores]
    group_index = result.group_index if result.HasField("group_index") else None
    return ChatRewardResult(index=result.index, score=float(result.score),
                            label_scores=to_label_scores(result.label_scores), step_scores=steps,
                            num_tokens=result.num_tokens, truncated=result.truncated,
                            group_index=group_index, response_index=result.response_index,
                            group_id=result.group_id, reused_tokens=result.reused_tokens)


def to_chat_reward_response(reply: pb.ChatRewardResponse) -> ChatRewardResponse:
    results = sorted((to_chat_reward_result(r) for r in reply.results), key=lambda r: r.index)
    return ChatRewardResponse(request_id=reply.request_id, model=reply.model, results=results,
                              usage=to_usage(reply.usage), timing=to_timing(reply.timing))


def to_model_info(reply: pb.GetModelInfoResponse) -> ModelInfo:
    pooling = {task_name(d.task): enum_name(pb.PoolingType, "POOLING_TYPE_", d.pooling_type)
               for d in reply.default_pooling}
    return ModelInfo(
        model=reply.model, architecture=reply.architecture,
        tasks=tuple(task_name(t) for t in reply.tasks), labels=tuple(reply.labels),
        max_model_len=reply.max_model_len, dtype=reply.dtype, hidden_size=reply.hidden_size,
        vocab_size=reply.vocab_size, has_chat_template=reply.has_chat_template,
        chat_template_sha256=reply.chat_template_sha256,
        tokenizer_sha256=reply.tokenizer_sha256, server_version=reply.server_version,
        default_pooling=pooling, is_causal=reply.is_causal,
        policy_tokenizers=tuple(to_policy_tokenizer(p) for p in reply.policy_tokenizers),
        stream_max_in_flight=reply.stream_max_in_flight)


def to_policy_tokenizer(info: pb.PolicyTokenizerInfo) -> PolicyTokenizerInfo:
    return PolicyTokenizerInfo(name=info.name, tokenizer_sha256=info.tokenizer_sha256,
                               chat_template_sha256=info.chat_template_sha256,
                               vocab_size=info.vocab_size, shares_vocab=info.shares_vocab,
                               parses_rendered=info.parses_rendered)
