"""Results of rewardserve calls as plain Python and NumPy values (frozen dataclasses).

Enums travel as lower-case names: tasks ``"classify"``, ``"token_classify"``, ``"embed"``,
``"token_embed"``; pooling types ``"last"``, ``"all"``, ``"cls"``, ``"mean"``, ``"step"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Usage:
    """Work a request caused: tokens fed to the model and sequences scored.

    ``reused_tokens``: tokens of ``prompt_tokens`` whose keys and values came from a prompt the
    server shared with another sequence (shared-prompt reuse) instead of being computed again;
    always 0 on a server started with ``--no-prefix-reuse``. Scores do not depend on it."""

    prompt_tokens: int = 0
    num_sequences: int = 0
    reused_tokens: int = 0


@dataclass(frozen=True)
class Timing:
    """Where a request's time went on the server, in seconds."""

    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class EncodeResult:
    """One input's result.

    ``data`` is float32 shaped ``[num_labels]`` (classify), ``[num_pooled, num_labels]``
    (token_classify), ``[dims]`` (embed) or ``[num_pooled, dims]`` (token_embed).
    """

    index: int
    data: np.ndarray
    num_tokens: int
    truncated: bool
    pooled_positions: List[int] = field(default_factory=list)
    reused_tokens: int = 0  # tokens of this input's prompt shared with another sequence (see Usage)


@dataclass(frozen=True)
class EncodeResponse:
    """The answer to ``encode`` (and the deprecated ``reward``); results in input order."""

    request_id: str
    model: str
    task: str
    results: List[EncodeResult]
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class StepScore:
    """A process reward model's score for one reasoning step."""

    position: int
    score: float
    label_scores: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatRewardResult:
    """One conversation's result.

    ``score`` is the raw reward (the head's output before activation, the number RLHF uses);
    ``label_scores`` are activated scores by label; ``step_scores`` is empty unless the model
    is a process reward model.
    """

    index: int
    score: float
    label_scores: Dict[str, float]
    step_scores: List[StepScore]
    num_tokens: int
    truncated: bool
    group_index: Optional[int] = None  # the group's position in ``groups``; None for a conversation
    response_index: int = 0            # the response's position in its group
    group_id: str = ""                 # the group's (or stream item's) group_id
    reused_tokens: int = 0             # tokens of its prompt shared with another sequence (see Usage)


@dataclass(frozen=True)
class ChatRewardResponse:
    """The answer to ``chat_reward``; results in input order."""

    request_id: str
    model: str
    results: List[ChatRewardResult]
    usage: Usage
    timing: Timing

    @property
    def scores(self) -> List[float]:
        """The raw rewards, one per conversation, in input order."""
        return [r.score for r in self.results]

    def group_scores(self) -> List[List[float]]:
        """The raw rewards of each group, in group order then response order (GRPO advantages)."""
        groups: Dict[int, List[float]] = {}
        for result in self.results:
            if result.group_index is not None:
                groups.setdefault(result.group_index, []).append(result.score)
        return [groups[g] for g in sorted(groups)]


@dataclass(frozen=True)
class ModelInfo:
    """The served model's description (every field of GetModelInfoResponse).

    ``default_pooling`` maps a task name to its default pooling type name.
    """

    model: str
    architecture: str
    tasks: Tuple[str, ...]
    labels: Tuple[str, ...]
    max_model_len: int
    dtype: str
    hidden_size: int
    vocab_size: int
    has_chat_template: bool
    chat_template_sha256: str
    tokenizer_sha256: str
    server_version: str
    default_pooling: Dict[str, str]
    is_causal: bool
    policy_tokenizers: Tuple["PolicyTokenizerInfo", ...] = ()
    stream_max_in_flight: int = 0


@dataclass(frozen=True)
class PolicyTokenizerInfo:
    """A policy tokenizer the server was started with (``--policy-tokenizer NAME=DIR``)."""

    name: str
    tokenizer_sha256: str
    chat_template_sha256: str
    vocab_size: int
    shares_vocab: bool       # token ids pass straight through to the reward model
    parses_rendered: bool    # rendered conversations of this policy can be re-templated


@dataclass(frozen=True)
class PolicyText:
    """A policy's output for ``response`` / ``rendered``: text or token ids, and which policy
    tokenizer made them (``""``: the reward model's own)."""

    text: Optional[str] = None
    token_ids: Optional[Sequence[int]] = None
    tokenizer: str = ""


@dataclass(frozen=True)
class StreamResult:
    """One stream item's answer: ``result`` on success, else ``error`` (a RewardServeError)."""

    id: str
    result: Optional[ChatRewardResult] = None
    error: Optional[Exception] = None
    timing: Optional[Timing] = None  # this item's queue, compute and total seconds on the server

    @property
    def ok(self) -> bool:
        return self.error is None
