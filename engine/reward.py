"""Reward semantics for ChatReward: the raw reward, label scores and step scores."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepResult:
    """A process reward model's score at one step tag position."""

    position: int
    score: float                                  # activated score of the positive (last) label
    label_scores: tuple[tuple[str, float], ...]   # (label, activated score) for every label


@dataclass(frozen=True)
class RewardResult:
    """One conversation's reward.

    ``score`` is the raw reward RLHF uses: the head's output before activation, at the last
    token, for the reward label (the only label, or the last of several). ``label_scores`` are
    the activated scores at the last token. ``step_scores`` is filled for process reward models.
    """

    index: int
    score: float
    label_scores: tuple[tuple[str, float], ...]
    num_tokens: int
    truncated: bool
    step_scores: tuple[StepResult, ...] = field(default_factory=tuple)
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
