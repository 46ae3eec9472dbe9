"""Build rewardserve.v1 request messages from plain Python arguments."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from google.protobuf import struct_pb2

from rewardserve_client.v1 import reward_service_pb2 as pb

Input = Union[str, Sequence[int]]
# A message list, or {"messages": [...], "response": ...} / {"rendered": ...} (see build_conversation).
Conversation = Union[Sequence[Mapping[str, str]], Mapping[str, Any]]
# {"prompt": [...messages], "responses": [...], "group_id": "..."}
Group = Mapping[str, Any]


def enum_value(enum, prefix: str, name: Optional[str]) -> int:
    """``"token_classify"`` -> POOLING_TASK_TOKEN_CLASSIFY; None or "" -> 0 (unspecified)."""
    if not name:
        return 0
    full = name.upper()
    full = full if full.startswith(prefix) else prefix + full
    try:
        return enum.Value(full)
    except ValueError:
        known = ", ".join(n[len(prefix):].lower() for n in enum.keys()[1:])
        raise ValueError(f"unknown value {name!r}; expected one of: {known}") from None


def enum_name(enum, prefix: str, value: int) -> str:
    """POOLING_TASK_TOKEN_CLASSIFY -> ``"token_classify"``; unknown numbers stay numbers."""
    try:
        return enum.Name(value)[len(prefix):].lower()
    except ValueError:  # a newer server may send values this client does not know yet
        return str(value)


def _add_input(add: Callable[..., Any], item: Any, index: int) -> Any:
    """``add(**fields)`` of one input: ``pb.EncodeInput`` itself or a repeated field's ``add``."""
    if isinstance(item, str):
        return add(text=item)
    if isinstance(item, (bytes, Mapping)) or not hasattr(item, "__iter__"):
        raise TypeError(f"inputs[{index}]: expected str or a sequence of token ids, "
                        f"got {type(item).__name__}")
    # tolist() turns NumPy / torch integer tensors into Python ints protobuf accepts.
    ids = item.tolist() if hasattr(item, "tolist") else list(item)
    try:
        # A plain dict, not a built TokenIds: assigning a message copies its ids once more.
        return add(token_ids={"ids": ids})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"inputs[{index}]: token ids must be integers in [0, 2**32): {exc}") from None


def _build_input(item: Any, index: int) -> pb.EncodeInput:
    return _add_input(pb.EncodeInput, item, index)


def _input_items(inputs: Union[Input, Iterable[Input]]) -> list:
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ValueError("inputs must not be empty")
    if all(isinstance(x, int) for x in items):
        raise TypeError("inputs is a flat list of ints; wrap one token id list as [ids]")
    return items


def add_inputs(field: Any, inputs: Union[Input, Iterable[Input]]) -> None:
    """Append the inputs to a request's repeated ``inputs`` field, built in place: a request
    made from built messages copies every token id list once more (tens of µs per call)."""
    for i, item in enumerate(_input_items(inputs)):
        _add_input(field.add, item, i)


def build_pooling(pooling_type=None, use_activation=None, normalize=None, dimensions=None,
                  step_tag_id=None, returned_token_ids=None) -> Optional[pb.PoolingParams]:
    """PoolingParams with only the overrides given, or None when there are none."""
    fields = dict(use_activation=use_activation, normalize=normalize, dimensions=dimensions,
                  step_tag_id=step_tag_id)
    fields = {k: v for k, v in fields.items() if v is not None}
    if pooling_type:
        fields["pooling_type"] = enum_value(pb.PoolingType, "POOLING_TYPE_", pooling_type)
    if returned_token_ids is not None:
        fields["returned_token_ids"] = [int(t) for t in returned_token_ids]
    return pb.PoolingParams(**fields) if fields else None


def build_truncation(truncate_prompt_tokens=None, truncation_side=None) -> Optional[pb.Truncation]:
    """Truncation with the options given, or None when there are none."""
    if truncate_prompt_tokens is None and not truncation_side:
        return None
    side = enum_value(pb.TruncationSide, "TRUNCATION_SIDE_", truncation_side)
    return pb.Truncation(truncate_prompt_tokens=truncate_prompt_tokens, side=side)


def _build_message(message: Any, where: str) -> pb.ChatMessage:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ValueError(f"{where}: expected a {{'role', 'content'}} dict, got {message!r}")
    return pb.ChatMessage(role=str(message["role"]), content=str(message["content"]))


def build_policy_text(value: Any, where: str) -> pb.PolicyText:
    """A response or rendering: ``str`` (text), a token id sequence, a ``PolicyText``, or a
    ``{"text" | "token_ids", "tokenizer"}`` dict."""
    if isinstance(value, str):
        return pb.PolicyText(text=value)
    if isinstance(value, Mapping) or hasattr(value, "tokenizer"):
        get = value.get if isinstance(value, Mapping) else lambda k: getattr(value, k, None)
        tokenizer, text, ids = get("tokenizer") or "", get("text"), get("token_ids")
        if (text is None) == (ids is None):
            raise ValueError(f"{where}: set exactly one of text and token_ids")
        if text is not None:
            return pb.PolicyText(tokenizer=tokenizer, text=text)
        return pb.PolicyText(tokenizer=tokenizer, token_ids=_build_input(ids, 0).token_ids)
    if hasattr(value, "__iter__") and not isinstance(value, bytes):
        return pb.PolicyText(token_ids=_build_input(value, 0).token_ids)
    raise TypeError(f"{where}: expected text, token ids or PolicyText, got {type(value).__name__}")


def build_conversation(conversation: Any, where: str) -> pb.Conversation:
    """A message list, or a dict with ``messages`` (+ ``response``) or ``rendered``."""
    if isinstance(conversation, str):
        raise TypeError(f"{where}: expected a list of messages or a dict")
    if not isinstance(conversation, Mapping):
        return pb.Conversation(messages=[_build_message(m, f"{where}[{j}]")
                                         for j, m in enumerate(conversation)])
    unknown = set(conversation) - {"messages", "response", "rendered"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    built = pb.Conversation(messages=[_build_message(m, f"{where}.messages[{j}]")
                                      for j, m in enumerate(conversation.get("messages") or ())])
    for key in ("response", "rendered"):
        if conversation.get(key) is not None:
            getattr(built, key).CopyFrom(build_policy_text(conversation[key], f"{where}.{key}"))
    return built


def build_conversations(conversations: Iterable[Conversation]) -> list:
    """Conversations as Conversation messages (may be empty when groups are sent)."""
    return [build_conversation(c, f"conversations[{i}]") for i, c in enumerate(conversations)]


def build_groups(groups: Iterable[Group]) -> list:
    """Groups (``{"prompt", "responses", "group_id"}`` dicts) as ChatGroup messages."""
    built = []
    for g, group in enumerate(groups):
        if not isinstance(group, Mapping) or "prompt" not in group or "responses" not in group:
            raise ValueError(f"groups[{g}]: expected a {{'prompt', 'responses'}} dict")
        prompt = [_build_message(m, f"groups[{g}].prompt[{j}]") for j, m in enumerate(group["prompt"])]
        responses = [build_policy_text(r, f"groups[{g}].responses[{i}]")
                     for i, r in enumerate(group["responses"])]
        built.append(pb.ChatGroup(prompt=prompt, responses=responses,
                                  group_id=str(group.get("group_id", "") or "")))
    return built


def build_struct(values: Optional[Mapping[str, Any]]) -> Optional[struct_pb2.Struct]:
    """A dict as google.protobuf.Struct (numbers travel as doubles), or None."""
    if not values:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def encode_request(inputs, task, *, pooling_type, use_activation, normalize, dimensions,
                   step_tag_id, returned_token_ids, truncate_prompt_tokens, truncation_side,
                   add_special_tokens, priority, request_id) -> pb.EncodeRequest:
    """The EncodeRequest for ``encode``'s arguments."""
    request = pb.EncodeRequest(task=enum_value(pb.PoolingTask, "POOLING_TASK_", task))
    add_inputs(request.inputs, inputs)
    request.MergeFrom(pb.EncodeRequest(
        pooling=build_pooling(pooling_type, use_activation, normalize, dimensions,
                              step_tag_id, returned_token_ids),
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        add_special_tokens=add_special_tokens, priority=priority, request_id=request_id))
    return request


def reward_request(inputs, *, pooling_type, use_activation, step_tag_id, returned_token_ids,
                   truncate_prompt_tokens, truncation_side, priority,
                   request_id) -> pb.RewardRequest:
    """The RewardRequest for the deprecated ``reward``'s arguments."""
    request = pb.RewardRequest()
    add_inputs(request.inputs, inputs)
    request.MergeFrom(pb.RewardRequest(
        pooling=build_pooling(pooling_type, use_activation, None, None,
                              step_tag_id, returned_token_ids),
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        priority=priority, request_id=request_id))
    return request


def chat_reward_request(conversations, *, chat_template, chat_template_kwargs,
                        add_generation_prompt, continue_final_message, truncate_prompt_tokens,
                        truncation_side, step_tag_id, returned_token_ids, priority,
                        request_id, groups=()) -> pb.ChatRewardRequest:
    """The ChatRewardRequest for ``chat_reward``'s arguments."""
    built, built_groups = build_conversations(conversations), build_groups(groups)
    if not built and not built_groups:
        raise ValueError("conversations must not be empty (or pass groups)")
    return pb.ChatRewardRequest(
        conversations=built, groups=built_groups,
        chat_template=chat_template or "",
        chat_template_kwargs=build_struct(chat_template_kwargs),
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        pooling=build_pooling(step_tag_id=step_tag_id, returned_token_ids=returned_token_ids),
        priority=priority, request_id=request_id)


def stream_options(*, chat_template, chat_template_kwargs, add_generation_prompt,
                   continue_final_message, truncate_prompt_tokens, truncation_side,
                   step_tag_id, returned_token_ids, priority,
                   max_in_flight) -> pb.StreamRewardOptions:
    """The StreamRewardOptions of a stream (every item shares them)."""
    return pb.StreamRewardOptions(
        chat_template=chat_template or "", chat_template_kwargs=build_struct(chat_template_kwargs),
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        pooling=build_pooling(step_tag_id=step_tag_id, returned_token_ids=returned_token_ids),
        priority=priority, max_in_flight=max_in_flight)


def stream_item(item_id: str, conversation: Conversation, group_id: str = "") -> pb.StreamItem:
    """One StreamItem."""
    return pb.StreamItem(id=str(item_id), conversation=build_conversation(conversation, f"item {item_id!r}"),
                         group_id=group_id or "")
