"""ChatReward and StreamReward conversions: conversations in their three forms, and groups.

A request's conversations and its groups' responses become one flat list of engine
``ChatInput``s (conversations first, then each group's responses in order); ``Origin`` remembers
where each came from, so results and errors can name the group and response again
(``proto_error``: the one mapping of engine field paths to proto paths). Only the proto shape
is checked here; the engine checks what the conversations mean (roles, empty conversations,
rendered vs messages, text or token ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import (ChatInput, InvalidInputError, ItemError, PolicyChat, PolicyText, PoolingParams,
                                    RewardResult)
from rewardserve.service.convert import chat_result, pooling_params, struct_to_dict

ENGINE_FIELD = "conversations"  # the field the engine names in its errors about a chat item


@dataclass(frozen=True)
class Origin:
    """Where a flattened conversation came from: its proto field path (``field[index]``), and
    for a group's response the group and response it answers."""

    field: str = ENGINE_FIELD
    index: int | None = None
    group_index: int | None = None
    response_index: int = 0
    group_id: str = ""


@dataclass(frozen=True)
class ChatOptions:
    """Options every conversation of a call shares (ChatRewardRequest, StreamRewardOptions)."""

    template: dict[str, Any]  # ChatInput's template fields
    params: PoolingParams
    priority: int


@dataclass(frozen=True)
class ChatCall:
    """One engine ``chat_reward`` call, as read from a ChatReward request."""

    conversations: tuple[ChatInput, ...]
    params: PoolingParams
    priority: int
    origins: tuple[Origin, ...]


def proto_error(exc: BaseException, origins: Sequence[Origin]) -> BaseException:
    """An engine error about chat item k (``conversations[k]``, the engine's name for the k-th
    conversation of its call), re-anchored at the proto path the caller put it at."""
    if not isinstance(exc, ItemError) or exc.field != ENGINE_FIELD or exc.index is None:
        return exc
    if exc.index >= len(origins):
        return exc
    origin = origins[exc.index]
    return exc.at(origin.field, origin.index)


def chat_options(message: Any) -> ChatOptions:
    """The shared options of a ChatRewardRequest or StreamRewardOptions (same field names)."""
    return ChatOptions(template_options(message), pooling_params(message.pooling, message.truncation),
                       message.priority)


def template_options(message: Any) -> dict[str, Any]:
    """ChatInput's template fields from a message with the chat option names (ChatRewardRequest,
    StreamRewardOptions, ChatOptions); None gives the defaults."""
    if message is None:
        return {}
    kwargs = struct_to_dict(message.chat_template_kwargs) if message.HasField("chat_template_kwargs") else {}
    return {"chat_template": message.chat_template or None, "chat_template_kwargs": kwargs,
            "add_generation_prompt": message.add_generation_prompt,
            "continue_final_message": message.continue_final_message}


def encode_conversation(conv: pb.Conversation, chat: pb.ChatOptions | None) -> ChatInput:
    """An Encode input's conversation (any form), rendered with the request's chat options."""
    return conversation(conv, ChatOptions(template_options(chat), PoolingParams(), 0))


def chat_call(request: pb.ChatRewardRequest) -> ChatCall:
    """Read a ChatRewardRequest: its conversations, then every group's responses, flattened."""
    if not request.conversations and not request.groups:
        raise InvalidInputError("conversations", "must not be empty (or send groups)")
    options = chat_options(request)
    chats = [conversation(c, options) for c in request.conversations]
    origins = [Origin(index=i) for i in range(len(chats))]
    for g, group in enumerate(request.groups):
        responses = group_conversations(group, g, options)
        chats += responses
        origins += [Origin(f"groups[{g}].responses", r, g, r, group.group_id) for r in range(len(responses))]
    return ChatCall(tuple(chats), options.params, options.priority, tuple(origins))


def conversation(conv: pb.Conversation, options: ChatOptions) -> ChatInput:
    """One Conversation in any of its forms: messages, messages + response, or rendered (which
    form is valid, and what the messages hold, the engine checks)."""
    turns = messages(conv.messages)
    if conv.HasField("rendered") or conv.HasField("response"):
        response = policy_text(conv.response) if conv.HasField("response") else None
        rendered = policy_text(conv.rendered) if conv.HasField("rendered") else None
        return PolicyChat(messages=turns, response=response, rendered=rendered, **options.template)
    return ChatInput(messages=turns, **options.template)


def group_conversations(group: pb.ChatGroup, index: int, options: ChatOptions) -> list[ChatInput]:
    """A group's responses, each after the shared prompt."""
    if not group.prompt:
        raise InvalidInputError("groups", "prompt must not be empty", index)
    if not group.responses:
        raise InvalidInputError("groups", "responses must not be empty", index)
    prompt = messages(group.prompt)
    return [PolicyChat(messages=prompt, response=policy_text(r), **options.template) for r in group.responses]


def messages(turns: Sequence[pb.ChatMessage]) -> tuple[dict[str, Any], ...]:
    """The turns as the plain dicts chat templates read (the engine checks the roles)."""
    return tuple({"role": m.role, "content": m.content} for m in turns)


def policy_text(message: pb.PolicyText) -> PolicyText:
    """A PolicyText as the engine reads it: text, token ids, or neither (the engine refuses that)."""
    kind = message.WhichOneof("content")
    if kind == "text":
        return PolicyText(message.tokenizer, text=message.text)
    if kind == "token_ids":
        return PolicyText(message.tokenizer, token_ids=tuple(message.token_ids.ids))
    return PolicyText(message.tokenizer)


def result(reward: RewardResult, origin: Origin, index: int | None = None) -> pb.ChatRewardResult:
    """A ChatRewardResult that says which group and response it answers."""
    message = chat_result(reward)
    if index is not None:
        message.index = index
    if origin.group_index is not None:
        message.group_index = origin.group_index
    message.response_index = origin.response_index
    message.group_id = origin.group_id
    return message
