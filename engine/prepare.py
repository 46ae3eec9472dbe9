"""Prepare: inputs → validated token ids and pooling plans (runs on the tokenizer threads)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

from rewardserve.engine.errors import InvalidInputError
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


@dataclass(frozen=True)
class Limits:
    """What the served model accepts."""

    vocab_size: int
    max_model_len: int
    append_token_id: int | None = None  # e.g. InternLM2's reward token after text/chat inputs


def to_input(value: Any, index: int, field_name: str) -> EncodeInput:
    """A plain input (str, list of ids, dict) as an input type; a wrong shape names the item."""
    try:
        return as_input(value)
    except TypeError as exc:
        raise InvalidInputError(field_name, str(exc), index) from None


def to_token_ids(item: EncodeInput, index: int, tokenizer: Tokenizer | None, params: PoolingParams,
                 field_name: str) -> list[int]:
    """Tokenize text, render conversations, or take token ids as given (checked to be integers)."""
    if isinstance(item, TokensInput):
        return integer_ids(item.token_ids, index, field_name)
    if tokenizer is None:
        raise InvalidInputError(field_name, "this server has no tokenizer; send token_ids", index)
    if isinstance(item, TextInput):
        add = True if params.add_special_tokens is None else params.add_special_tokens
        return tokenizer.encode(item.text, add_special_tokens=add)
    if isinstance(item, ChatInput):
        return tokenizer.render_chat(item, field_name, index)
    raise InvalidInputError(field_name, f"unsupported input type {type(item).__name__}", index)


def integer_ids(ids: Sequence[Any], index: int, field_name: str) -> list[int]:
    """Caller-given token ids as a list of ints; NumPy integers pass, floats and bools do not."""
    if all(type(t) is int for t in ids):  # the common case, checked fast
        return list(ids)
    wrong = next((t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
    if wrong is not None:
        raise InvalidInputError(field_name, f"token ids must be integers, not {type(wrong).__name__} "
                                f"({wrong!r})", index)
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
    keep = params.truncate_prompt_tokens
    if keep is not None:
        if keep == -1:
            keep = limits.max_model_len
        if not 0 < keep <= limits.max_model_len:
            raise InvalidInputError("truncation.truncate_prompt_tokens",
                                    f"must be -1 or in 1..{limits.max_model_len}, not {keep}")
        if total > keep:
            room = keep - len(tail)
            side = params.truncation_side or "left"
            return [*(ids[len(ids) - room:] if side == "left" else ids[:room]), *tail], True
    if total > limits.max_model_len:
        raise InvalidInputError(field_name, f"input has {total} tokens, more than max_model_len "
                                f"{limits.max_model_len}; set truncate_prompt_tokens to truncate", index)
    return [*ids, *tail], False


def prepare(inputs: Sequence[Any], pooling: ResolvedPooling, params: PoolingParams,
            tokenizer: Tokenizer | None, limits: Limits, field_name: str = "inputs") -> list[WorkItem]:
    """Validate every input; the first bad one raises, naming its field and index."""
    if not inputs:
        raise InvalidInputError(field_name, "must not be empty")
    items = []
    for index, value in enumerate(inputs):
        item = to_input(value, index, field_name)
        ids = to_token_ids(item, index, tokenizer, params, field_name)
        appends = limits.append_token_id is not None and not isinstance(item, TokensInput)
        tail = (limits.append_token_id,) if appends else ()
        check_tokens([*ids, *tail], index, limits, field_name)
        ids, truncated = truncate(ids, index, params, limits, field_name, tail)
        items.append(WorkItem(index, ids, truncated, pooling, pooled_positions(ids, pooling)))
    return items
