"""Re-templating: turn a policy's response or rendered conversation into reward-model input.

Three forms arrive in ``PolicyChat`` (see the proto's ``Conversation``):

* ``messages`` + ``response`` (text or policy token ids) → the response becomes the final
  assistant turn. Token ids of a tokenizer that shares the RM's vocabulary pass straight
  through: the RM reads exactly the tokens the policy generated, between its own rendering of
  the prompt (with the generation prompt) and its own end-of-turn marker.
* ``rendered`` (the whole conversation as the policy's template rendered it) → padding is
  stripped; with the RM's own template it is used as is, otherwise it is parsed back into turns
  with the policy's template markers and rendered again with the RM's template.
* ``messages`` alone → unchanged.

End-of-sequence / padding artefacts of the policy are stripped, and BOS never doubles: the RM's
template writes its own BOS, the policy's is consumed as part of its template head.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from rewardserve.engine.chat_markers import UnparsableRendering, strip_tokens
from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.policy import PolicyChat, PolicyText, PolicyTokenizer, PolicyTokenizers
from rewardserve.engine.types import ChatInput, EncodeInput, TokensInput


class Retemplater:
    """Resolves PolicyChat items into plain ChatInput (rendered by the RM) or TokensInput."""

    def __init__(self, tokenizers: PolicyTokenizers):
        self.tokenizers = tokenizers

    def resolve_all(self, chats: Sequence[ChatInput], field: str = "conversations") -> list[EncodeInput]:
        """Every item resolved; plain ChatInputs pass unchanged."""
        return [self.resolve(chat, i, field) for i, chat in enumerate(chats)]

    def resolve(self, chat: ChatInput, index: int, field: str = "conversations") -> EncodeInput:
        """One item: a ChatInput for the RM's template, or the token ids to score."""
        if not isinstance(chat, PolicyChat) or (chat.response is None and chat.rendered is None):
            return chat
        if chat.rendered is not None:
            if chat.response is not None or chat.messages:
                raise InvalidInputError(field, "rendered: excludes messages and response", index)
            return self._rendered(chat, index, field)
        return self._response(chat, index, field)

    # ------------------------------------------------------------ messages + response

    def _response(self, chat: PolicyChat, index: int, field: str) -> EncodeInput:
        if not chat.messages:
            raise InvalidInputError(field, "messages must not be empty (the prompt of the response)", index)
        policy = self._policy(chat.response, index, field, "response")
        ids = chat.response.token_ids
        if ids is not None and policy.shares_vocab:
            spliced = self._splice(chat, policy, list(ids), index, field)
            if spliced is not None:
                return spliced
        text = self._response_text(chat.response, policy, index, field)
        return _plain(chat, (*chat.messages, {"role": "assistant", "content": text}))

    def _splice(self, chat: PolicyChat, policy: PolicyTokenizer, ids: list[int], index: int,
                field: str) -> TokensInput | None:
        """RM prompt ids (with its generation prompt) + the policy's ids + the RM's end of turn."""
        own = self.tokenizers.own
        markers = own.markers(chat.chat_template)
        end = markers.turn("assistant") if markers else None
        if end is None:
            return None  # the RM's template has no learnable end-of-turn: decode and render instead
        _check_ids(ids, policy, index, field, "response")
        prompt = own.render_chat(_plain(chat, chat.messages, add_generation_prompt=True), field, index)
        body = _strip_ids(ids, policy, trailing=True)
        return TokensInput(tuple(prompt + body + own.encode(end.suffix, add_special_tokens=False)))

    def _response_text(self, response: PolicyText, policy: PolicyTokenizer, index: int, field: str) -> str:
        tok = policy.tokenizer
        if response.token_ids is not None:
            _check_ids(response.token_ids, policy, index, field, "response")
            text = tok.decode(_strip_ids(list(response.token_ids), policy, trailing=True))
        else:
            text = response.text or ""
        return strip_tokens(text, tok.special_tokens, end=True)

    # ------------------------------------------------------------ rendered conversations

    def _rendered(self, chat: PolicyChat, index: int, field: str) -> EncodeInput:
        rendered = chat.rendered
        policy = self._policy(rendered, index, field, "rendered")
        own_template = policy.same_template and not chat.chat_template
        if rendered.token_ids is not None:
            _check_ids(rendered.token_ids, policy, index, field, "rendered")
            ids = _strip_ids(list(rendered.token_ids), policy, leading=True, pad_only=True)
            if own_template:
                return TokensInput(tuple(ids))  # same tokenizer and template: the ids as they are
            text = policy.tokenizer.decode(ids)
        else:
            text = _strip_pads(rendered.text or "", policy)
            if own_template:
                return TokensInput(tuple(self.tokenizers.own.encode_rendered(text)))
        return _plain(chat, self._parse(text, policy, index, field))

    def _parse(self, text: str, policy: PolicyTokenizer, index: int, field: str) -> tuple[dict, ...]:
        markers = policy.markers
        if markers is None:
            raise InvalidInputError(field, f"rendered: policy tokenizer {policy.name!r} has no chat template whose "
                                    "turns can be parsed; send messages + response instead", index)
        specials = policy.tokenizer.special_tokens
        try:
            return tuple(markers.parse(text, lambda rest: strip_tokens(rest, specials, end=True)))
        except UnparsableRendering as exc:
            raise InvalidInputError(field, f"rendered: not a conversation rendered with {policy.name!r}'s "
                                    f"chat template: {exc}", index) from None

    def _policy(self, text: PolicyText, index: int, field: str, part: str) -> PolicyTokenizer:
        if text.text is None and text.token_ids is None:
            raise InvalidInputError(field, f"{part}: set either text or token_ids", index)
        if text.token_ids is not None and not text.token_ids:
            raise InvalidInputError(field, f"{part}: token_ids must not be empty", index)
        return self.tokenizers.get(text.tokenizer, field, index, f"{part}.tokenizer")


def _plain(chat: PolicyChat, messages: Sequence[dict], **overrides) -> ChatInput:
    """The PolicyChat's template options around ``messages``, as a plain ChatInput."""
    options = {f.name: getattr(chat, f.name) for f in dataclasses.fields(ChatInput) if f.name != "messages"}
    return ChatInput(messages=tuple(messages), **{**options, **overrides})


def _check_ids(ids: Sequence[int], policy: PolicyTokenizer, index: int, field: str, part: str) -> None:
    size = len(policy.tokenizer)
    bad = next((t for t in ids if not 0 <= t < size), None)
    if bad is not None:
        raise InvalidInputError(field, f"{part}.token_ids: token id {bad} is outside the vocabulary of policy "
                                f"tokenizer {policy.name!r} (0..{size - 1})", index)


def _strip_ids(ids: list[int], policy: PolicyTokenizer, *, leading: bool = False, trailing: bool = True,
               pad_only: bool = False) -> list[int]:
    """Drop left padding and trailing EOS/end-of-turn/padding ids (only padding with ``pad_only``)."""
    tok = policy.tokenizer
    pads = {tok.pad_id} if tok.pad_id is not None else set()
    drop = pads if pad_only else pads | tok.special_ids
    start, end = 0, len(ids)
    while leading and start < end and ids[start] in pads:
        start += 1
    while trailing and end > start and ids[end - 1] in drop:
        end -= 1
    return ids[start:end]


def _strip_pads(text: str, policy: PolicyTokenizer) -> str:
    pad = policy.tokenizer.hf.pad_token
    return strip_tokens(text, [pad] if pad else [], start=True, end=True)
