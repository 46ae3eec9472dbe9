"""Prepare: inputs → validated token ids and pooling plans (runs on the tokenizer threads)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

from rewardserve.engine.errors import InvalidInputError, preview
from rewardserve.engine.pooling import ResolvedPooling, pooled_positions
from rewardserve.engine.tokenizer import Tokenizer
from rewardserve.engine.types import (ChatInput, EncodeInput, PoolingParams, PoolingType, TextInput, TokensInput,
                                      as_input)


@dataclass
class WorkItem:
    """One sequence to run: what the scheduler queues and the runner packs."""

    index: int                      # position in the caller's input list
    token_ids: list[int]
    truncated: bool
    pooling: ResolvedPooling
    positions: list[int]            # pooled positions within the sequence
    owner: Any = None               # the request this item belongs to (scheduler's business)
    result: Any = field(default=None, repr=False)  # (data, logits) once computed
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
    is_complete: bool = False       # reported to the scheduler (its tokens left the queue count)
    token_type_ids: list[int] | None = None  # segment ids of a pair (BERT-family Score), per token
    reused_tokens: int = 0          # tokens of its shared prefix computed for another item (PackedBatch.of)
    block_names: Any = field(default=None, repr=False)  # the prefix cache's names of its blocks (memo)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_step_rows(self) -> int:
        """How many leading pooled rows are step tags (STEP pooling; a PRM's outcome row is not)."""
        pooling, n = self.pooling, len(self.positions)
        if pooling.pooling_type != PoolingType.STEP:
            return 0
        outcome_only = pooling.reads_last and n and self.token_ids[self.positions[-1]] != pooling.step_tag_id
        return n - 1 if outcome_only else n


# A text cut before tokenizing keeps this many characters beyond what can fit, so that the
# tokenization near the cut (which may split a word differently) stays outside the kept tokens.
CUT_MARGIN_CHARS = 4096


@dataclass(frozen=True)
class Limits:
    """What the served model accepts, checked before any tokenization or allocation."""

    vocab_size: int
    max_model_len: int
    append_token_id: int | None = None  # e.g. InternLM2's reward token after text/chat inputs
    max_items: int = 1 << 62            # --max-items-per-request
    max_chars: int = 1 << 62            # --max-input-chars, resolved (characters of one input)


def resolve_max_chars(configured: int, max_model_len: int, longest_token_chars: int) -> int:
    """--max-input-chars, or (0) what can fit: max_model_len tokens of the longest token's length.
    A text longer than that has more than max_model_len tokens (every token covers at most
    ``longest_token_chars`` characters), so it can be cut or refused before tokenizing it."""
    return configured if configured > 0 else max_model_len * max(1, longest_token_chars)


def check_count(inputs: Sequence[Any], limits: Limits, field_name: str) -> None:
    """Refuse an empty request, or one with more items than --max-items-per-request (before
    any item is looked at)."""
    if not inputs:
        raise InvalidInputError(field_name, "must not be empty")
    if len(inputs) > limits.max_items:
        raise InvalidInputError(field_name, f"has {len(inputs)} items, more than the limit of {limits.max_items} "
                                            "(--max-items-per-request); split the request")


def fit_text(text: str, index: int, params: PoolingParams, limits: Limits, field_name: str) -> str:
    """A text within --max-input-chars as it is; a longer one cut on the truncation side (when
    truncation is asked for; the margin keeps the result equal to tokenize-then-truncate) or
    refused, before it is tokenized."""
    if len(text) <= limits.max_chars:
        return text
    if params.truncate_prompt_tokens is None:
        raise InvalidInputError(field_name, f"text has {len(text)} characters, more than the limit of "
                                f"{limits.max_chars} (--max-input-chars; max_model_len is {limits.max_model_len} "
                                "tokens); set truncate_prompt_tokens to truncate", index)
    room = limits.max_chars + CUT_MARGIN_CHARS
    return text[len(text) - room:] if (params.truncation_side or "left") == "left" else text[:room]


def check_chat_chars(messages: Sequence[Any], index: int, limits: Limits, field_name: str) -> None:
    """A conversation whose contents alone exceed --max-input-chars is refused before rendering."""
    total = sum(len(m.get("content") or "") for m in messages
                if isinstance(m, dict) and isinstance(m.get("content"), str))
    if total > limits.max_chars:
        raise InvalidInputError(field_name, f"conversation has {total} characters of content, more than the limit "
                                f"of {limits.max_chars} (--max-input-chars)", index)


def cut_ids(ids: Sequence[Any], index: int, params: PoolingParams, limits: Limits, field_name: str) -> Sequence[Any]:
    """Caller-given ids counted before any list is built (``ids`` may be the wire message's
    repeated field): too many without truncation is refused; with truncation only the kept end
    (plus one id, so that ``truncate`` still cuts and reports it) is copied out."""
    keep = params.truncate_prompt_tokens
    if keep is None:
        if len(ids) > limits.max_model_len:
            raise too_long(len(ids), index, limits, field_name)
        return ids
    keep = limits.max_model_len if keep == -1 else keep
    if not 0 < keep <= limits.max_model_len or len(ids) <= keep + 1:
        return ids  # ``truncate`` names a bad keep; short inputs need no cut
    left = (params.truncation_side or "left") == "left"
    return ids[len(ids) - keep - 1:] if left else ids[:keep + 1]


def to_input(value: Any, index: int, field_name: str) -> EncodeInput:
    """A plain input (str, list of ids, dict) as an input type; a wrong shape names the item."""
    try:
        return as_input(value)
    except TypeError as exc:
        raise InvalidInputError(field_name, str(exc), index) from None


def to_token_ids(item: EncodeInput, index: int, tokenizer: Tokenizer | None, params: PoolingParams,
                 field_name: str, limits: Limits) -> list[int]:
    """Tokenize text, render conversations, or take token ids as given (checked to be integers)."""
    if isinstance(item, TokensInput):
        return integer_ids(cut_ids(item.token_ids, index, params, limits, field_name), index, field_name)
    if tokenizer is None:
        raise InvalidInputError(field_name, "this server has no tokenizer; send token_ids", index)
    if isinstance(item, TextInput):
        add = True if params.add_special_tokens is None else params.add_special_tokens
        return tokenizer.encode(fit_text(item.text, index, params, limits, field_name), add_special_tokens=add)
    if isinstance(item, ChatInput):
        check_chat_chars(item.messages, index, limits, field_name)
        return tokenizer.render_chat(item, field_name, index)
    raise InvalidInputError(field_name, f"unsupported input type {type(item).__name__}", index)


def integer_ids(ids: Sequence[Any], index: int, field_name: str) -> list[int]:
    """Caller-given token ids as a list of ints; NumPy integers pass, floats and bools do not."""
    if all(type(t) is int for t in ids):  # the common case, checked fast
        return list(ids)
    wrong = next((t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
    if wrong is not None:
        raise InvalidInputError(field_name, f"token ids must be integers, not {type(wrong).__name__} "
                                f"({preview(wrong)})", index)
    return [int(t) for t in ids]


def check_tokens(ids: list[int], index: int, limits: Limits, field_name: str) -> None:
    if not ids:
        raise InvalidInputError(field_name, "input is empty (0 tokens)", index)
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise InvalidInputError(field_name, f"token id {bad} is outside the vocabulary "
                                f"(0..{limits.vocab_size - 1})", index)


def truncate(ids: list[int], index: int, params: PoolingParams, limits: Limits,
             field_name: str, tail: Sequence[int] = ()) -> tuple[list[int], bool]:
    """Apply truncate_prompt_tokens (-1: to max_model_len); refuse over-long input without it.

    ``tail`` (InternLM2's reward token) always ends the result: it counts toward the limits and
    only ``ids`` are cut."""
    total = len(ids) + len(tail)
    keep = keep_tokens(params.truncate_prompt_tokens, limits)
    if keep is not None and total > keep:
        room = keep - len(tail)
        side = params.truncation_side or "left"
        return [*(ids[len(ids) - room:] if side == "left" else ids[:room]), *tail], True
    if total > limits.max_model_len:
        raise too_long(total, index, limits, field_name)
    return [*ids, *tail], False


def keep_tokens(keep: int | None, limits: Limits) -> int | None:
    """``truncate_prompt_tokens`` resolved: None (no truncation) or how many tokens to keep
    (-1: max_model_len); anything outside 1..max_model_len is refused."""
    if keep is None:
        return None
    keep = limits.max_model_len if keep == -1 else keep
    if not 0 < keep <= limits.max_model_len:
        raise InvalidInputError("truncation.truncate_prompt_tokens",
                                f"must be -1 or in 1..{limits.max_model_len}, not {keep}")
    return keep


def too_long(tokens: int, index: int | None, limits: Limits, field_name: str) -> InvalidInputError:
    """The refusal of an input over max_model_len without truncation."""
    return InvalidInputError(field_name, f"input has {tokens} tokens, more than max_model_len "
                             f"{limits.max_model_len}; set truncate_prompt_tokens to truncate", index)


def prepare(inputs: Sequence[Any], pooling: ResolvedPooling, params: PoolingParams,
            tokenizer: Tokenizer | None, limits: Limits, field_name: str = "inputs") -> list[WorkItem]:
    """Validate every input; the first bad one raises, naming its field and index. The item
    count is the caller's to admit first (``EngineCore`` calls ``check_count`` before anything,
    re-templating included, reads an item)."""
    items = []
    for index, value in enumerate(inputs):
        item = to_input(value, index, field_name)
        ids = to_token_ids(item, index, tokenizer, params, field_name, limits)
        appends = limits.append_token_id is not None and not isinstance(item, TokensInput)
        tail = (limits.append_token_id,) if appends else ()
        check_tokens([*ids, *tail], index, limits, field_name)
        ids, truncated = truncate(ids, index, params, limits, field_name, tail)
        items.append(WorkItem(index, ids, truncated, pooling, pooled_positions(ids, pooling)))
    return items
