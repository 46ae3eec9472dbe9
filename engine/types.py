"""Public value types of the engine: tasks, pooling parameters, inputs and results.

Torch-free to import (tensors appear in annotations only), so the gRPC service can use these
types without loading torch.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

if TYPE_CHECKING:
    import torch


class PoolingTask(str, enum.Enum):
    """What a request asks the model for (vLLM's pooling tasks)."""

    CLASSIFY = "classify"              # one label vector per sequence
    TOKEN_CLASSIFY = "token_classify"  # one label vector per pooled token (ALL or STEP)
    EMBED = "embed"                    # one hidden-state vector per sequence
    TOKEN_EMBED = "token_embed"        # one hidden-state vector per pooled token


class PoolingType(str, enum.Enum):
    """Which positions of a sequence are pooled."""

    LAST = "LAST"  # the final token (decoder reward models)
    ALL = "ALL"    # every token
    CLS = "CLS"    # the first token (BERT family)
    MEAN = "MEAN"  # the mean over all tokens
    STEP = "STEP"  # the positions of a step tag (process reward models)


SEQUENCE_TASKS = (PoolingTask.CLASSIFY, PoolingTask.EMBED)
TOKEN_TASKS = (PoolingTask.TOKEN_CLASSIFY, PoolingTask.TOKEN_EMBED)


@dataclass(frozen=True)
class PoolingParams:
    """Per-request pooling options; ``None`` means "use the server / model default".

    Override order: request > server ``--pooler-config`` > sentence-transformers config >
    architecture default.
    """

    pooling_type: PoolingType | None = None
    use_activation: bool | None = None          # False returns raw logits
    normalize: bool | None = None               # L2-normalise embeddings
    dimensions: int | None = None               # keep the first N dims (Matryoshka), then normalise
    step_tag_id: int | None = None              # STEP: token id that marks the end of a step
    returned_token_ids: tuple[int, ...] | None = None  # keep only these label / vocab columns
    truncate_prompt_tokens: int | None = None   # -1 = truncate to max_model_len
    truncation_side: str | None = None          # "left" keeps the last tokens (default), "right" the first
    add_special_tokens: bool | None = None      # text inputs only; default True


@dataclass(frozen=True)
class TextInput:
    """Raw text, tokenized by the model's tokenizer."""

    text: str


@dataclass(frozen=True)
class TokensInput:
    """Token ids already produced by the model's tokenizer. Any sequence of ints: a server may
    pass its wire message's repeated field, which the engine counts before copying ids out."""

    token_ids: Sequence[int]


@dataclass(frozen=True)
class ChatInput:
    """A conversation rendered with the model's chat template (or an override template)."""

    messages: tuple[dict[str, Any], ...]
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = False
    continue_final_message: bool = False


OWN_TOKENIZER = ""  # PolicyText.tokenizer naming the reward model's own tokenizer


@dataclass(frozen=True)
class PolicyText:
    """Text or token ids from a policy; ``tokenizer`` names the policy tokenizer ("" = the RM's)."""

    tokenizer: str = OWN_TOKENIZER
    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PolicyChat(ChatInput):
    """A ChatInput whose final assistant turn is a policy ``response``, or a whole policy
    ``rendered`` conversation (then ``messages`` is empty). Resolved by the engine's Retemplater."""

    response: PolicyText | None = None
    rendered: PolicyText | None = None


EncodeInput = Union[TextInput, TokensInput, ChatInput]


def as_input(value: Any) -> EncodeInput:
    """Accept the plain forms ``str``, ``list[int]`` and ``{"messages": [...]}`` as inputs."""
    if isinstance(value, (TextInput, TokensInput, ChatInput)):
        return value
    if isinstance(value, str):
        return TextInput(value)
    if isinstance(value, dict) and "messages" in value:
        if not isinstance(value["messages"], (list, tuple)):
            raise TypeError("messages must be a list of {role, content} objects")
        return ChatInput(messages=tuple(value["messages"]))
    if isinstance(value, dict) and "text" in value:
        if not isinstance(value["text"], str):
            raise TypeError(f"text must be a string, not {type(value['text']).__name__}")
        return TextInput(value["text"])
    if isinstance(value, dict) and "token_ids" in value:
        value = value["token_ids"]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"token_ids must be a list of integers, not {type(value).__name__}")
    if isinstance(value, (list, tuple)):
        return TokensInput(tuple(value))
    raise TypeError(f"cannot use {type(value).__name__} as an encode input")


@dataclass
class EncodeResult:
    """The result for one input, in the order the inputs were given.

    ``data`` is what the task asks for, on the CPU in float32: ``[num_labels]`` for classify,
    ``[num_pooled, num_labels]`` for token_classify, ``[dims]`` for embed and
    ``[num_pooled, dims]`` for token_embed. ``logits`` holds the head output before the
    activation (classify tasks only): for a one-label reward model that is the raw reward.
    """

    index: int
    data: torch.Tensor
    num_tokens: int
    truncated: bool
    pooled_positions: list[int]
    task: PoolingTask                 # the task the engine ran (resolved when the request left it unset)
    logits: torch.Tensor | None = None
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
    reused_tokens: int = 0            # leading tokens not computed for it: a shared prefix computed once


@dataclass(frozen=True)
class PolicyTokenizerInfo:
    """What GetModelInfo says about one policy tokenizer."""

    name: str
    tokenizer_sha256: str
    chat_template_sha256: str
    vocab_size: int
    shares_vocab: bool
    parses_rendered: bool


@dataclass(frozen=True)
class ModelInfo:
    """What is served: enough for a trainer to pin the reward model it trains against."""

    model: str
    architecture: str
    tasks: tuple[PoolingTask, ...]
    num_labels: int
    labels: tuple[str, ...]
    hidden_size: int
    vocab_size: int
    max_model_len: int
    dtype: str
    is_causal: bool
    has_chat_template: bool
    default_pooling: dict[PoolingTask, PoolingType]
    chat_template_sha256: str = ""
    tokenizer_sha256: str = ""
    policy_tokenizers: tuple[PolicyTokenizerInfo, ...] = ()  # --policy-tokenizer (not the RM's own)
