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
    reused_tokens: int = 0    # leading tokens not computed for it (a prompt shared in its batch)


def to_reward_result(item, labels: tuple[str, ...]) -> RewardResult:
    """A computed WorkItem (classify, or token_classify over step tags + the last token) → RewardResult.

    ``item.result`` is (data, logits): [L] each for classify, [rows, L] for a process RM, whose
    first ``item.num_step_rows`` pooled rows are step tags; the last row is the outcome.
    """
    data, logits = item.result
    data = data if data.dim() == 2 else data[None]          # [rows, L]
    logits = logits if logits.dim() == 2 else logits[None]  # [rows, L]
    names = labels if len(labels) == data.shape[1] else tuple(f"LABEL_{i}" for i in range(data.shape[1]))
    rows = item.num_step_rows
    steps = tuple(StepResult(pos, float(row[-1]), _label_scores(names, row))
                  for pos, row in zip(item.positions[:rows], data[:rows]))
    return RewardResult(index=item.index, score=float(logits[-1, -1]), label_scores=_label_scores(names, data[-1]),
                        num_tokens=item.num_tokens, truncated=item.truncated, step_scores=steps,
                        queue_time_s=item.queue_time_s, compute_time_s=item.compute_time_s,
                        reused_tokens=item.reused_tokens)


def _label_scores(names: tuple[str, ...], row) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(v)) for name, v in zip(names, row.tolist()))
