"""ChatReward and StreamReward conversions: conversations in their three forms, and groups.

A request's conversations and its groups' responses become one flat list of engine
``ChatInput``s (conversations first, then each group's responses in order); ``Origin`` remembers
where each came from, so results and errors can name the group and response again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.errors import InvalidInputError, ItemError
from rewardserve.engine.policy import PolicyChat, PolicyText
from rewardserve.engine.reward import RewardResult
from rewardserve.engine.types import ChatInput, PoolingParams
from rewardserve.service.convert import chat_result, pooling_params, struct_to_dict

ENGINE_FIELD = "conversations"  # the field the engine names in its errors about a chat item


@dataclass(frozen=True)
class Origin:
    """Where a flattened conversation came from: a plain conversation, or a group's response."""

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

    def relocate(self, exc: ItemError) -> ItemError:
        """An engine error about flattened item k, re-anchored where the caller put it."""
        if exc.field != ENGINE_FIELD or exc.index is None or exc.index >= len(self.origins):
            return exc
        origin = self.origins[exc.index]
        if origin.group_index is None:
            return exc
        return exc.at(f"groups[{origin.group_index}].responses", origin.response_index)


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


def encode_conversation(conv: pb.Conversation, chat: pb.ChatOptions | None, index: int) -> ChatInput:
    """An Encode input's conversation (any form), rendered with the request's chat options."""
    return conversation(conv, ChatOptions(template_options(chat), PoolingParams(), 0), "inputs", index)


def chat_call(request: pb.ChatRewardRequest) -> ChatCall:
    """Read a ChatRewardRequest: its conversations, then every group's responses, flattened."""
    if not request.conversations and not request.groups:
        raise InvalidInputError("conversations", "must not be empty (or send groups)")
    options = chat_options(request)
    chats = [conversation(c, options, "conversations", i) for i, c in enumerate(request.conversations)]
    origins = [Origin()] * len(chats)
    for g, group in enumerate(request.groups):
        responses = group_conversations(group, g, options)
        chats += responses
        origins += [Origin(g, r, group.group_id) for r in range(len(responses))]
    return ChatCall(tuple(chats), options.params, options.priority, tuple(origins))


def conversation(conv: pb.Conversation, options: ChatOptions, field: str, index: int | None) -> ChatInput:
    """One Conversation in any of its forms: messages, messages + response, or rendered."""
    if conv.HasField("rendered"):
        if conv.messages or conv.HasField("response"):
            raise InvalidInputError(field, "rendered excludes messages and response", index)
        rendered = policy_text(conv.rendered, field, index, "rendered")
        return PolicyChat(messages=(), rendered=rendered, **options.template)
    where = field if index is None else f"{field}[{index}]"
    if not conv.messages:
        raise InvalidInputError(field, "messages must not be empty", index)
    turns = messages(conv.messages, f"{where}.messages")
    if conv.HasField("response"):
        return PolicyChat(messages=turns, response=policy_text(conv.response, field, index, "response"),
                          **options.template)
    return ChatInput(messages=turns, **options.template)


def group_conversations(group: pb.ChatGroup, index: int, options: ChatOptions) -> list[ChatInput]:
    """A group's responses, each after the shared prompt."""
    if not group.prompt:
        raise InvalidInputError("groups", "prompt must not be empty", index)
    if not group.responses:
        raise InvalidInputError("groups", "responses must not be empty", index)
    prompt = messages(group.prompt, f"groups[{index}].prompt")
    return [PolicyChat(messages=prompt, response=policy_text(r, f"groups[{index}].responses", i),
                       **options.template) for i, r in enumerate(group.responses)]


def messages(turns: Sequence[pb.ChatMessage], field: str) -> tuple[dict[str, Any], ...]:
    """The turns as the plain dicts chat templates read; roles are checked by the engine."""
    for turn, message in enumerate(turns):
        if not message.role:
            raise InvalidInputError(field, "role must not be empty", turn)
    return tuple({"role": m.role, "content": m.content} for m in turns)


def policy_text(message: pb.PolicyText, field: str, index: int | None, part: str = "") -> PolicyText:
    """A PolicyText: text, or non-empty token ids, with its tokenizer name."""
    prefix = f"{part}: " if part else ""
    kind = message.WhichOneof("content")
    if kind == "text":
        return PolicyText(message.tokenizer, text=message.text)
    if kind == "token_ids" and message.token_ids.ids:
        return PolicyText(message.tokenizer, token_ids=tuple(message.token_ids.ids))
    reason = "token_ids.ids must not be empty" if kind else "set either text or token_ids"
    raise InvalidInputError(field, prefix + reason, index)


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
