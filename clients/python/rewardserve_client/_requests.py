"""Build rewardserve.v1 request messages from plain Python arguments.

This is the client's one check of argument shape (types, required keys, known enum names);
what the values mean (roles, lengths, vocabulary) the server decides. Every refusal is an
:class:`~rewardserve_client.InvalidArgumentError` whose message starts with the parameter and
item, in the proto's field-path style: ``conversations[0].messages[1]: missing 'content'``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from google.protobuf import struct_pb2

from rewardserve_client.errors import invalid_argument
from rewardserve_client.v1 import reward_service_pb2 as pb

Input = Union[str, Sequence[int]]
# A message list, or {"messages": [...], "response": ...} / {"rendered": ...} (see build_conversation).
Conversation = Union[Sequence[Mapping[str, str]], Mapping[str, Any]]
# {"prompt": [...messages], "responses": [...], "group_id": "..."}
Group = Mapping[str, Any]


def check_timeout(timeout: Optional[float], param: str = "timeout") -> Optional[float]:
    """A deadline in seconds: a positive number, or None."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise invalid_argument(f"{param}: must be a positive number of seconds or None, "
                               f"got {timeout!r}")
    return timeout


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def enum_value(enum, prefix: str, name: Optional[str], param: str) -> int:
    """``"token_classify"`` -> POOLING_TASK_TOKEN_CLASSIFY; None or "" -> 0 (unspecified)."""
    if name is None or name == "":
        return 0
    if isinstance(name, str):
        full = name.upper()
        full = full if full.startswith(prefix) else prefix + full
        try:
            return enum.Value(full)
        except ValueError:
            pass
    known = ", ".join(n[len(prefix):].lower() for n in enum.keys()[1:])
    if not isinstance(name, str):
        raise invalid_argument(f"{param}: expected a str, got {type(name).__name__}; "
                               f"expected one of: {known}")
    raise invalid_argument(f"{param}: unknown value {name!r}; expected one of: {known}")


def enum_name(enum, prefix: str, value: int) -> str:
    """POOLING_TASK_TOKEN_CLASSIFY -> ``"token_classify"``; unknown numbers stay numbers."""
    try:
        return enum.Name(value)[len(prefix):].lower()
    except ValueError:  # a newer server may send values this client does not know yet
        return str(value)


def build_message(cls, where: str = "", **fields: Any):
    """``cls(**fields)``; a value protobuf refuses is named (``where`` + field) in the error."""
    try:
        return cls(**fields)
    except (TypeError, ValueError):
        pass
    for name, value in fields.items():
        try:
            cls(**{name: value})
        except (TypeError, ValueError) as exc:
            raise invalid_argument(f"{where}{name}: invalid value {_short(value)} "
                                   f"({type(value).__name__}): {exc}") from None
    raise AssertionError("unreachable: a refused message has a refused field")


def _bad_token_id(ids: list, where: str):
    """The refusal naming the first id protobuf could not take (only on the error path)."""
    for j, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < 2 ** 32:
            return invalid_argument(f"{where}[{j}]: token ids are integers in [0, 2**32), "
                                    f"got {_short(token)}")
    return invalid_argument(f"{where}: token ids are integers in [0, 2**32)")


def with_token_ids(build: Callable[[list], Any], item: Any, where: str) -> Any:
    """``build(ids)`` for a sequence of token ids; protobuf checks them in C, we name the bad one."""
    # tolist() turns NumPy / torch integer tensors into Python ints protobuf accepts.
    ids = item.tolist() if hasattr(item, "tolist") else list(item)
    try:
        return build(ids)
    except (TypeError, ValueError):
        raise _bad_token_id(ids, where) from None


def _add_input(add: Callable[..., Any], item: Any, where: str, conversations: bool = False) -> Any:
    """``add(**fields)`` of one input: ``pb.EncodeInput`` itself or a repeated field's ``add``.
    With ``conversations`` (Encode), a message list or a ``{"messages" | "rendered"}`` dict is
    a conversation, rendered by the server with the request's chat options."""
    if isinstance(item, str):
        return add(text=item)
    if conversations and _is_conversation(item):
        return add(conversation=build_conversation(item, where))
    if isinstance(item, (bytes, Mapping)) or not hasattr(item, "__iter__"):
        expected = "str, a sequence of token ids or a conversation" if conversations else \
            "str or a sequence of token ids"
        raise invalid_argument(f"{where}: expected {expected}, got {type(item).__name__}")
    # A plain dict, not a built TokenIds: assigning a message copies its ids once more.
    return with_token_ids(lambda ids: add(token_ids={"ids": ids}), item, f"{where}.token_ids")


def _is_conversation(item: Any) -> bool:
    """A dict, or a non-empty list/tuple of message dicts (token id lists hold ints)."""
    return isinstance(item, Mapping) or (isinstance(item, (list, tuple)) and bool(item)
                                         and isinstance(item[0], Mapping))


def _input_items(inputs: Union[Input, Iterable[Input]], call: str) -> list:
    if isinstance(inputs, str):
        items = [inputs]
    elif isinstance(inputs, (list, tuple)):  # the usual case, checked first: this is per call
        items = list(inputs)
    elif isinstance(inputs, (bytes, Mapping)) or not hasattr(inputs, "__iter__"):
        raise invalid_argument(f"{call}: inputs must be a list of texts or token id lists, "
                               f"got {type(inputs).__name__}")
    else:
        items = list(inputs)
    if not items:
        raise invalid_argument(f"inputs: must not be empty ({call})")
    if all(isinstance(x, int) for x in items):
        raise invalid_argument(f"{call}: inputs is a flat list of ints; wrap one token id list "
                               "as [ids]")
    return items


def add_inputs(field: Any, inputs: Union[Input, Iterable[Input]], call: str,
               conversations: bool = False) -> None:
    """Append the inputs to a request's repeated ``inputs`` field, built in place: a request
    made from built messages copies every token id list once more (tens of µs per call).
    ``conversations``: conversation inputs are allowed (Encode)."""
    for i, item in enumerate(_input_items(inputs, call)):
        _add_input(field.add, item, f"inputs[{i}]", conversations)


def build_pooling(pooling_type=None, use_activation=None, normalize=None, dimensions=None,
                  step_tag_id=None, returned_token_ids=None) -> Optional[pb.PoolingParams]:
    """PoolingParams with only the overrides given, or None when there are none."""
    fields = dict(use_activation=use_activation, normalize=normalize, dimensions=dimensions,
                  step_tag_id=step_tag_id)
    fields = {k: v for k, v in fields.items() if v is not None}
    if pooling_type:
        fields["pooling_type"] = enum_value(pb.PoolingType, "POOLING_TYPE_", pooling_type,
                                            "pooling_type")
    if returned_token_ids is not None:
        if isinstance(returned_token_ids, (str, bytes)) or not hasattr(returned_token_ids, "__iter__"):
            raise invalid_argument("returned_token_ids: expected a sequence of token ids, "
                                   f"got {type(returned_token_ids).__name__}")
        fields["returned_token_ids"] = with_token_ids(
            lambda ids: list(pb.PoolingParams(returned_token_ids=ids).returned_token_ids),
            returned_token_ids, "returned_token_ids")
    return build_message(pb.PoolingParams, **fields) if fields else None


def build_truncation(truncate_prompt_tokens=None, truncation_side=None) -> Optional[pb.Truncation]:
    """Truncation with the options given, or None when there are none."""
    if truncate_prompt_tokens is None and not truncation_side:
        return None
    side = enum_value(pb.TruncationSide, "TRUNCATION_SIDE_", truncation_side, "truncation_side")
    return build_message(pb.Truncation, truncate_prompt_tokens=truncate_prompt_tokens, side=side)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid_argument(f"{where}: expected a str, got {type(value).__name__}")
    return value


def _build_chat_message(message: Any, where: str) -> pb.ChatMessage:
    if not isinstance(message, Mapping):
        raise invalid_argument(f"{where}: expected a {{'role': ..., 'content': ...}} dict, "
                               f"got {type(message).__name__}")
    for key in ("role", "content"):
        if key not in message:
            raise invalid_argument(f"{where}: missing {key!r}")
    return pb.ChatMessage(role=_text(message["role"], f"{where}.role"),
                          content=_text(message["content"], f"{where}.content"))


def _build_messages(messages: Any, where: str) -> list:
    if isinstance(messages, (str, bytes, Mapping)) or not hasattr(messages, "__iter__"):
        raise invalid_argument(f"{where}: expected a list of messages, got {type(messages).__name__}")
    return [_build_chat_message(m, f"{where}[{j}]") for j, m in enumerate(messages)]


def build_policy_text(value: Any, where: str) -> pb.PolicyText:
    """A response or rendering: ``str`` (text), a token id sequence, a ``PolicyText``, or a
    ``{"text" | "token_ids", "tokenizer"}`` dict."""
    if isinstance(value, str):
        return pb.PolicyText(text=value)
    if isinstance(value, Mapping) or hasattr(value, "tokenizer"):
        get = value.get if isinstance(value, Mapping) else lambda k: getattr(value, k, None)
        tokenizer, text, ids = get("tokenizer") or "", get("text"), get("token_ids")
        tokenizer = _text(tokenizer, f"{where}.tokenizer")
        if (text is None) == (ids is None):
            raise invalid_argument(f"{where}: set exactly one of text and token_ids")
        if text is not None:
            return pb.PolicyText(tokenizer=tokenizer, text=_text(text, f"{where}.text"))
        return with_token_ids(lambda i: pb.PolicyText(tokenizer=tokenizer, token_ids={"ids": i}),
                              _sequence(ids, f"{where}.token_ids"), f"{where}.token_ids")
    if hasattr(value, "__iter__") and not isinstance(value, bytes):
        return with_token_ids(lambda i: pb.PolicyText(token_ids={"ids": i}), value,
                              f"{where}.token_ids")
    raise invalid_argument(f"{where}: expected text, token ids or PolicyText, "
                           f"got {type(value).__name__}")


def _sequence(value: Any, where: str) -> Any:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise invalid_argument(f"{where}: expected a sequence of token ids, got {type(value).__name__}")
    return value


def build_conversation(conversation: Any, where: str) -> pb.Conversation:
    """A message list, or a dict with ``messages`` (+ ``response``) or ``rendered``."""
    if isinstance(conversation, (str, bytes)) or not (
            isinstance(conversation, Mapping) or hasattr(conversation, "__iter__")):
        raise invalid_argument(f"{where}: expected a list of messages or a dict, "
                               f"got {type(conversation).__name__}")
    if not isinstance(conversation, Mapping):
        return pb.Conversation(messages=_build_messages(conversation, f"{where}.messages"))
    unknown = set(conversation) - {"messages", "response", "rendered"}
    if unknown:
        raise invalid_argument(f"{where}: unknown keys {sorted(map(str, unknown))}; expected "
                               "'messages' (+ 'response') or 'rendered'")
    built = pb.Conversation(messages=_build_messages(conversation.get("messages") or (),
                                                     f"{where}.messages"))
    for key in ("response", "rendered"):
        if conversation.get(key) is not None:
            getattr(built, key).CopyFrom(build_policy_text(conversation[key], f"{where}.{key}"))
    return built


def _iterable(value: Any, param: str) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise invalid_argument(f"{param}: expected a list, got {type(value).__name__}")
    return list(value)


def build_conversations(conversations: Iterable[Conversation]) -> list:
    """Conversations as Conversation messages (may be empty when groups are sent)."""
    return [build_conversation(c, f"conversations[{i}]")
            for i, c in enumerate(_iterable(conversations, "conversations"))]


def build_groups(groups: Iterable[Group]) -> list:
    """Groups (``{"prompt", "responses", "group_id"}`` dicts) as ChatGroup messages."""
    built = []
    for g, group in enumerate(_iterable(groups, "groups")):
        where = f"groups[{g}]"
        if not isinstance(group, Mapping):
            raise invalid_argument(f"{where}: expected a {{'prompt', 'responses'}} dict, "
                                   f"got {type(group).__name__}")
        for key in ("prompt", "responses"):
            if key not in group:
                raise invalid_argument(f"{where}: missing {key!r}")
        prompt = _build_messages(group["prompt"], f"{where}.prompt")
        responses = [build_policy_text(r, f"{where}.responses[{i}]")
                     for i, r in enumerate(_iterable(group["responses"], f"{where}.responses"))]
        group_id = _text(group.get("group_id") or "", f"{where}.group_id")
        built.append(pb.ChatGroup(prompt=prompt, responses=responses, group_id=group_id))
    return built


def build_struct(values: Optional[Mapping[str, Any]], param: str) -> Optional[struct_pb2.Struct]:
    """A dict as google.protobuf.Struct (numbers travel as doubles), or None."""
    if not values:
        return None
    if not isinstance(values, Mapping):
        raise invalid_argument(f"{param}: expected a dict, got {type(values).__name__}")
    struct = struct_pb2.Struct()
    for key, value in values.items():
        try:
            struct.update({key: value})
        except (TypeError, ValueError, AttributeError) as exc:
            raise invalid_argument(f"{param}[{key!r}]: not representable as JSON "
                                   f"({type(value).__name__}): {exc}") from None
    return struct


def encode_request(inputs, task, *, pooling_type, use_activation, normalize, dimensions,
                   step_tag_id, returned_token_ids, truncate_prompt_tokens, truncation_side,
                   add_special_tokens, priority, request_id, chat_template=None,
                   chat_template_kwargs=None, add_generation_prompt=False,
                   continue_final_message=False) -> pb.EncodeRequest:
    """The EncodeRequest for ``encode``'s arguments."""
    request = pb.EncodeRequest(task=enum_value(pb.PoolingTask, "POOLING_TASK_", task, "task"))
    add_inputs(request.inputs, inputs, "encode", conversations=True)
    request.MergeFrom(build_message(
        pb.EncodeRequest,
        pooling=build_pooling(pooling_type, use_activation, normalize, dimensions,
                              step_tag_id, returned_token_ids),
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        add_special_tokens=add_special_tokens, priority=priority, request_id=request_id,
        chat_options=build_chat_options(chat_template, chat_template_kwargs,
                                        add_generation_prompt, continue_final_message)))
    return request


def build_chat_options(chat_template=None, chat_template_kwargs=None, add_generation_prompt=False,
                       continue_final_message=False) -> Optional[pb.ChatOptions]:
    """ChatOptions (how Encode renders conversation inputs), or None when all are defaults."""
    if not (chat_template or chat_template_kwargs or add_generation_prompt or continue_final_message):
        return None
    return build_message(
        pb.ChatOptions, "chat_options.",
        chat_template=_text(chat_template or "", "chat_template"),
        chat_template_kwargs=build_struct(chat_template_kwargs, "chat_template_kwargs"),
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)


def reward_request(inputs, *, pooling_type, use_activation, step_tag_id, returned_token_ids,
                   truncate_prompt_tokens, truncation_side, priority,
                   request_id) -> pb.RewardRequest:
    """The RewardRequest for the deprecated ``reward``'s arguments."""
    request = pb.RewardRequest()
    add_inputs(request.inputs, inputs, "reward")
    request.MergeFrom(build_message(
        pb.RewardRequest,
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
        raise invalid_argument("conversations: must not be empty when no groups are given (chat_reward)")
    return build_message(
        pb.ChatRewardRequest,
        conversations=built, groups=built_groups,
        chat_template=chat_template or "",
        chat_template_kwargs=build_struct(chat_template_kwargs, "chat_template_kwargs"),
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
    return build_message(
        pb.StreamRewardOptions,
        chat_template=chat_template or "",
        chat_template_kwargs=build_struct(chat_template_kwargs, "chat_template_kwargs"),
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
        truncation=build_truncation(truncate_prompt_tokens, truncation_side),
        pooling=build_pooling(step_tag_id=step_tag_id, returned_token_ids=returned_token_ids),
        priority=priority, max_in_flight=max_in_flight)


def stream_item(item_id: Any, conversation: Conversation, group_id: str, where: str) -> pb.StreamItem:
    """One StreamItem; ``where`` names it in errors (``items[3]``, ``submit``)."""
    group_id = _text(group_id or "", f"{where}.group_id")
    return pb.StreamItem(id=str(item_id), group_id=group_id,
                         conversation=build_conversation(conversation, f"{where}.conversation"))
