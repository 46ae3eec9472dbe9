"""Proto ↔ engine conversions, and the proto shape checks (nothing else).

Requests become engine inputs, tasks and ``PoolingParams``; a request whose shape cannot be read
(an empty list, an unset oneof, an unknown enum number) raises the engine's own
``InvalidInputError`` (field + item index) so that one error table (service/errors.py) maps it.
What values mean (ranges, roles, token ids, lengths, the task) is checked by the engine alone. Results carry torch tensors; they are read through NumPy, or their own
``tolist`` when small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from google.protobuf import json_format
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import (EncodeInput, EncodeResult, InvalidInputError, ModelInfo, PolicyTokenizerInfo,
                                    PoolingParams, PoolingTask, PoolingType, RewardResult, StepResult, TextInput,
                                    TokensInput, preview)
from rewardserve.service import packed

TASKS = {
    pb.POOLING_TASK_CLASSIFY: PoolingTask.CLASSIFY,
    pb.POOLING_TASK_TOKEN_CLASSIFY: PoolingTask.TOKEN_CLASSIFY,
    pb.POOLING_TASK_EMBED: PoolingTask.EMBED,
    pb.POOLING_TASK_TOKEN_EMBED: PoolingTask.TOKEN_EMBED,
}
POOLING_TYPES = {
    pb.POOLING_TYPE_LAST: PoolingType.LAST,
    pb.POOLING_TYPE_ALL: PoolingType.ALL,
    pb.POOLING_TYPE_CLS: PoolingType.CLS,
    pb.POOLING_TYPE_MEAN: PoolingType.MEAN,
    pb.POOLING_TYPE_STEP: PoolingType.STEP,
}
TRUNCATION_SIDES = {pb.TRUNCATION_SIDE_LEFT: "left", pb.TRUNCATION_SIDE_RIGHT: "right"}
TASK_TO_PROTO = {task: value for value, task in TASKS.items()}
POOLING_TYPE_TO_PROTO = {kind: value for value, kind in POOLING_TYPES.items()}


@dataclass(frozen=True)
class EncodeCall:
    """One engine ``encode`` call, as read from an Encode or Reward request."""

    inputs: tuple[EncodeInput, ...]
    task: PoolingTask | None
    params: PoolingParams
    priority: int


# ---------------------------------------------------------------- requests → engine

def encode_call(request: pb.EncodeRequest) -> EncodeCall:
    """Read an EncodeRequest; the task stays None when unspecified."""
    task = _enum(request.task, TASKS, "task")
    add_special = request.add_special_tokens if request.HasField("add_special_tokens") else None
    params = pooling_params(request.pooling, request.truncation, add_special_tokens=add_special)
    chat = request.chat_options if request.HasField("chat_options") else None
    return EncodeCall(encode_inputs(request.inputs, chat), task, params, request.priority)


def reward_call(request: pb.RewardRequest) -> EncodeCall:
    """Read the deprecated RewardRequest: Encode with TOKEN_CLASSIFY."""
    params = pooling_params(request.pooling, request.truncation)
    return EncodeCall(encode_inputs(request.inputs), PoolingTask.TOKEN_CLASSIFY, params, request.priority)


def encode_inputs(inputs: Sequence[pb.EncodeInput], chat: pb.ChatOptions | None = None) -> Sequence[EncodeInput]:
    """Text, token ids or a conversation per input, converted as the engine reads them
    (``ProtoInputs``); an empty list is refused, an unset input once the engine reaches it.
    ``chat`` says how conversations are rendered (EncodeRequest.chat_options)."""
    if not inputs:
        raise InvalidInputError("inputs", "must not be empty")
    return ProtoInputs(inputs, chat, packed.current())


class ProtoInputs(Sequence[EncodeInput]):
    """The request's inputs as engine inputs, converted one by one when read: the engine counts
    them (``len``) and refuses a request over its item limit before a single Python object is
    made per input; token ids stay the message's repeated field (see ``_encode_input``), or the
    request's bytes when the wire cut them out (``cut``: service/packed.py, by input key)."""

    def __init__(self, inputs: Sequence[pb.EncodeInput], chat: pb.ChatOptions | None = None,
                 cut: Mapping[tuple, Sequence[int]] | None = None) -> None:
        self._inputs = inputs
        self._chat = chat
        self._cut = cut or {}

    def __len__(self) -> int:
        return len(self._inputs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = index if index >= 0 else index + len(self)
        return _encode_input(self._inputs[index], index, self._chat, self._cut.get(("inputs", index, "token_ids")))


def _encode_input(item: pb.EncodeInput, index: int, chat: pb.ChatOptions | None = None,
                  cut: Sequence[int] | None = None) -> EncodeInput:
    kind = item.WhichOneof("input")
    if kind == "conversation":
        # chat_convert reads conversations (it imports this module, hence the late import)
        from rewardserve.service import chat_convert

        return chat_convert.encode_conversation(item.conversation, chat)  # the engine names bad turns
    if kind == "text":
        return TextInput(item.text)
    if kind == "token_ids":  # empty ids are the engine's to refuse, as every empty input
        # the repeated field itself, or the ids left on the wire: the engine counts them before copying any
        return TokensInput(item.token_ids.ids if cut is None else cut)
    raise InvalidInputError("inputs", "set either text or token_ids, or a conversation", index)


def pooling_params(pooling: pb.PoolingParams, truncation: pb.Truncation, *,
                   add_special_tokens: bool | None = None) -> PoolingParams:
    """Merge the request's pooling and truncation messages; unset fields stay None (defaults)."""
    return PoolingParams(
        pooling_type=_enum(pooling.pooling_type, POOLING_TYPES, "pooling.pooling_type"),
        use_activation=_optional(pooling, "use_activation"),
        normalize=_optional(pooling, "normalize"),
        dimensions=_optional(pooling, "dimensions"),
        step_tag_id=_optional(pooling, "step_tag_id"),
        returned_token_ids=tuple(pooling.returned_token_ids) or None,
        truncate_prompt_tokens=_optional(truncation, "truncate_prompt_tokens"),
        truncation_side=_enum(truncation.side, TRUNCATION_SIDES, "truncation.side"),
        add_special_tokens=add_special_tokens,
    )


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _enum(value: int, table: dict[int, Any], where: str) -> Any:
    """Map a proto enum value; 0 (UNSPECIFIED) is None. Unknown numbers come from newer clients."""
    if value == 0:
        return None
    if value not in table:
        raise InvalidInputError(where, f"unknown value {preview(value)}")
    return table[value]


def struct_to_dict(struct: Any) -> dict[str, Any]:
    """A Struct as plain Python; whole numbers become ints (JSON has one number type, Jinja two)."""
    return _whole_numbers_as_int(json_format.MessageToDict(struct))


def _whole_numbers_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    return value


# ---------------------------------------------------------------- engine → replies

SMALL_TENSOR = 4096  # values; up to here a Python list is cheaper than the NumPy round trip


def float_tensor(data: Any) -> pb.FloatTensor:
    """A result tensor (torch, NumPy or nested lists) as a row-major FloatTensor."""
    tensor = pb.FloatTensor()
    fill_float_tensor(tensor, data)
    return tensor


def fill_float_tensor(tensor: pb.FloatTensor, data: Any) -> None:
    """Write ``data`` (torch, NumPy or nested lists) into an empty FloatTensor, row-major.

    Small results (a score, an embedding) go in as a list of floats: ``tolist`` is one C call,
    where NumPy's conversion of a torch tensor costs tens of µs on the reply path. Big ones go
    in as one packed field (tag, length, little-endian float32 bytes), which protobuf parses at
    memcpy speed: a Python list holds the event loop for about a second per 4M values.
    """
    flat = data.reshape(-1) if hasattr(data, "reshape") and hasattr(data, "tolist") else None
    if flat is not None and len(flat) <= SMALL_TENSOR:
        tensor.shape.extend(data.shape or (1,))  # a 0-d value is [1], as np.ascontiguousarray has it
        tensor.values.extend(flat.tolist())
        return
    array = np.ascontiguousarray(np.asarray(data, dtype="<f4"))
    tensor.shape.extend(array.shape)
    raw = array.tobytes()
    tensor.MergeFromString(_VALUES_TAG + packed.varint(len(raw)) + raw)


_VALUES_TAG = bytes([(pb.FloatTensor.VALUES_FIELD_NUMBER << 3) | 2])  # field 2, length-delimited


def add_encode_results(field: Any, results: Sequence[EncodeResult]) -> None:
    """Append results to a reply's repeated ``results``, built in place (no message copies)."""
    for result in results:
        _fill_encode_result(field.add(), result)


def _fill_encode_result(message: pb.EncodeResult, result: EncodeResult) -> None:
    message.index, message.num_tokens, message.truncated = result.index, result.num_tokens, result.truncated
    message.reused_tokens = result.reused_tokens
    message.pooled_positions.extend(result.pooled_positions)
    fill_float_tensor(message.data, result.data)


def label_scores(pairs: Iterable[tuple[str, float]]) -> list[pb.LabelScore]:
    """(label, score) pairs as LabelScore messages."""
    return [pb.LabelScore(label=label, score=score) for label, score in pairs]


def step_score(step: StepResult) -> pb.StepScore:
    """One process-reward step."""
    return pb.StepScore(position=step.position, score=step.score, label_scores=label_scores(step.label_scores))


def chat_result(result: RewardResult) -> pb.ChatRewardResult:
    """One conversation's reward."""
    return pb.ChatRewardResult(index=result.index, score=result.score, label_scores=label_scores(result.label_scores),
                               step_scores=[step_score(s) for s in result.step_scores],
                               num_tokens=result.num_tokens, truncated=result.truncated,
                               reused_tokens=result.reused_tokens)


def usage(results: Sequence[EncodeResult | RewardResult]) -> dict[str, int]:
    """Tokens and sequences the request cost, as Usage fields: a reply built with a dict holds
    no Usage message that its constructor would copy."""
    return {"prompt_tokens": sum(r.num_tokens for r in results), "num_sequences": len(results),
            "reused_tokens": sum(r.reused_tokens for r in results)}


def timing(results: Sequence[EncodeResult | RewardResult], total_s: float) -> dict[str, float]:
    """Queue and compute time as Timing fields (see ``usage``): the longest item's, since a
    request's items share forward passes."""
    return {"queue_seconds": max((r.queue_time_s for r in results), default=0.0),
            "compute_seconds": max((r.compute_time_s for r in results), default=0.0), "total_seconds": total_s}


def model_info(info: ModelInfo, server_version: str, stream_max_in_flight: int = 0) -> pb.GetModelInfoResponse:
    """What is served, plus the server's version and stream limit."""
    defaults = [pb.DefaultPooling(task=TASK_TO_PROTO[task], pooling_type=POOLING_TYPE_TO_PROTO[kind])
                for task, kind in info.default_pooling.items()]
    return pb.GetModelInfoResponse(
        policy_tokenizers=[policy_tokenizer(p) for p in info.policy_tokenizers], stream_max_in_flight=stream_max_in_flight,
        model=info.model, architecture=info.architecture, tasks=[TASK_TO_PROTO[t] for t in info.tasks],
        labels=list(info.labels), max_model_len=info.max_model_len, dtype=info.dtype,
        hidden_size=info.hidden_size, vocab_size=info.vocab_size, has_chat_template=info.has_chat_template,
        chat_template_sha256=info.chat_template_sha256, tokenizer_sha256=info.tokenizer_sha256,
        server_version=server_version, default_pooling=defaults, is_causal=info.is_causal)


def policy_tokenizer(info: PolicyTokenizerInfo) -> pb.PolicyTokenizerInfo:
    """One policy tokenizer's GetModelInfo entry."""
    return pb.PolicyTokenizerInfo(name=info.name, tokenizer_sha256=info.tokenizer_sha256,
                                  chat_template_sha256=info.chat_template_sha256, vocab_size=info.vocab_size,
                                  shares_vocab=info.shares_vocab, parses_rendered=info.parses_rendered)
