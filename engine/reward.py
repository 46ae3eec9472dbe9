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


def to_reward_result(result, labels: tuple[str, ...], step_flags: list[bool] | None) -> RewardResult:
    """EncodeResult (classify, or token_classify over steps + last token) → RewardResult.

    For a process RM the pooled positions are the step tags plus the last token; ``step_flags``
    says which pooled rows are step tags. The last row gives the outcome score.
    """
    data = result.data if result.data.dim() == 2 else result.data[None]      # [rows, L]
    logits = result.logits if result.logits.dim() == 2 else result.logits[None]
    names = labels if len(labels) == data.shape[1] else tuple(f"LABEL_{i}" for i in range(data.shape[1]))
    steps = tuple(StepResult(pos, float(row[-1]), _label_scores(names, row))
                  for pos, row, is_tag in zip(result.pooled_positions, data, step_flags or ()) if is_tag)
    return RewardResult(index=result.index, score=float(logits[-1, -1]), label_scores=_label_scores(names, data[-1]),
                        num_tokens=result.num_tokens, truncated=result.truncated, step_scores=steps,
                        queue_time_s=result.queue_time_s, compute_time_s=result.compute_time_s)


def _label_scores(names: tuple[str, ...], row) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(v)) for name, v in zip(names, row.tolist()))
