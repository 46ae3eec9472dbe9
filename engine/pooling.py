"""Pooling: which positions to read, the head, the activation, normalisation.

Phases: ``resolve`` (request > server config > model traits) when a request arrives,
``pooled_positions`` at prepare time (from token ids alone), ``finish`` on the CPU after the
runner has gathered the pooled rows and applied the head.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from rewardserve.engine.errors import InvalidInputError, UnsupportedTaskError
from rewardserve.engine.models.base import ModelTraits
from rewardserve.engine.types import SEQUENCE_TASKS, PoolingParams, PoolingTask, PoolingType

SERVER_KEYS = {"pooling_type", "use_activation", "normalize", "dimensions", "step_tag_id",
               "returned_token_ids", "truncation_side"}
LOAD_KEYS = {"classifier_from_token", "method"}  # read by the model adapters at load time
SEQUENCE_POOLING = (PoolingType.LAST, PoolingType.CLS, PoolingType.MEAN)
TOKEN_POOLING = (PoolingType.ALL, PoolingType.STEP)


@dataclass(frozen=True)
class ResolvedPooling:
    """Every pooling choice made, for one request."""

    task: PoolingTask
    pooling_type: PoolingType
    activation: str | None               # sigmoid | softmax | identity; None for embed tasks
    normalize: bool
    dimensions: int | None
    step_tag_id: int | None
    returned_token_ids: tuple[int, ...] | None
    reads_last: bool = False             # STEP: read the last token too (a process RM's outcome score)

    @property
    def uses_head(self) -> bool:
        return self.task in (PoolingTask.CLASSIFY, PoolingTask.TOKEN_CLASSIFY)


def server_params(overrides: dict[str, Any]) -> PoolingParams:
    """``--pooler-config`` JSON → PoolingParams; unknown keys are errors."""
    unknown = sorted(set(overrides) - SERVER_KEYS - LOAD_KEYS)
    if unknown:
        raise ValueError(f"unknown --pooler-config key(s): {', '.join(unknown)}")
    values = {k: v for k, v in overrides.items() if k in SERVER_KEYS}
    ids = [values.get("step_tag_id"), *(values.get("returned_token_ids") or [])]
    if any(i is not None and (isinstance(i, bool) or not isinstance(i, int)) for i in ids):
        raise ValueError("--pooler-config step_tag_id and returned_token_ids must be token ids (integers)")
    if "pooling_type" in values:
        values["pooling_type"] = PoolingType(str(values["pooling_type"]).upper())
    if "returned_token_ids" in values:
        values["returned_token_ids"] = tuple(values["returned_token_ids"])
    return PoolingParams(**values)


def merge(base: PoolingParams, top: PoolingParams | None) -> PoolingParams:
    """Fields set in ``top`` win over ``base``."""
    if top is None:
        return base
    return replace(base, **{f.name: getattr(top, f.name) for f in fields(top) if getattr(top, f.name) is not None})


def default_task(traits: ModelTraits, pooling_type: PoolingType | None = None) -> PoolingTask:
    """The task of a request that names none; the one rule, which the reply reports back.

    classify when the model has a score head, embed otherwise; the token-level variant of either
    when the configured pooling (request > --pooler-config) reads tokens (ALL, STEP).
    """
    token_level = pooling_type in TOKEN_POOLING
    if traits.num_labels:
        return PoolingTask.TOKEN_CLASSIFY if token_level else PoolingTask.CLASSIFY
    return PoolingTask.TOKEN_EMBED if token_level else PoolingTask.EMBED


def resolve(traits: ModelTraits, task: PoolingTask | None, params: PoolingParams) -> ResolvedPooling:
    """Apply the override order and check the combination; ``params`` is server+request merged."""
    task = task or default_task(traits, params.pooling_type)
    if task not in traits.tasks():
        raise UnsupportedTaskError("task", f"{traits.architecture} cannot do {task.value}; "
                                   f"it supports {', '.join(t.value for t in traits.tasks())}")
    pooling_type = params.pooling_type or traits.default_pooling[task]
    allowed = SEQUENCE_POOLING if task in SEQUENCE_TASKS else TOKEN_POOLING
    if pooling_type not in allowed:
        raise InvalidInputError("pooling.pooling_type", f"{pooling_type.value} cannot be used for "
                                f"{task.value}; use one of {', '.join(p.value for p in allowed)}")
    step_tag_id = params.step_tag_id if params.step_tag_id is not None else traits.step_tag_id
    if pooling_type == PoolingType.STEP and step_tag_id is None:
        raise InvalidInputError("pooling.step_tag_id", "STEP pooling needs a step tag token id")
    if step_tag_id is not None and not 0 <= step_tag_id < traits.vocab_size:
        # It could never match a token: every sequence would have 0 step positions.
        raise InvalidInputError("pooling.step_tag_id", f"{step_tag_id} is outside the vocabulary "
                                                       f"(0..{traits.vocab_size - 1})")
    use_activation = True if params.use_activation is None else params.use_activation
    activation = traits.activation if task in (PoolingTask.CLASSIFY, PoolingTask.TOKEN_CLASSIFY) else None
    returned = params.returned_token_ids or traits.returned_token_ids
    check_dimensions(traits, task, params.dimensions)
    normalize = traits.normalize if params.normalize is None else params.normalize
    return ResolvedPooling(task, pooling_type, activation if use_activation else "identity",
                           normalize, params.dimensions, step_tag_id, tuple(returned) if returned else None)


def check_dimensions(traits: ModelTraits, task: PoolingTask, dimensions: int | None) -> None:
    if dimensions is None:
        return
    if task not in (PoolingTask.EMBED, PoolingTask.TOKEN_EMBED):
        raise InvalidInputError("pooling.dimensions", "only embed tasks take dimensions")
    if not 0 < dimensions <= traits.hidden_size:
        raise InvalidInputError("pooling.dimensions", f"must be in 1..{traits.hidden_size}")


def pooled_positions(token_ids: list[int], pooling: ResolvedPooling) -> list[int]:
    """The positions read for one sequence (MEAN reads all of them and averages)."""
    n = len(token_ids)
    kind = pooling.pooling_type
    if kind == PoolingType.LAST:
        return [n - 1]
    if kind == PoolingType.CLS:
        return [0]
    if kind == PoolingType.STEP:
        steps = [i for i, t in enumerate(token_ids) if t == pooling.step_tag_id]
        if pooling.reads_last and (not steps or steps[-1] != n - 1):
            steps.append(n - 1)
        return steps
    return list(range(n))  # ALL, MEAN


def finish(rows: torch.Tensor, pooling: ResolvedPooling) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Post-process one sequence's pooled rows on the CPU → (data, logits).

    rows: [num_pooled, num_labels] head logits (classify tasks) or [num_pooled, hidden]
    (embed tasks; MEAN already averaged by the runner to [1, hidden]).
    """
    rows = rows.float()
    if pooling.uses_head:
        logits = rows[:, list(pooling.returned_token_ids)] if pooling.returned_token_ids else rows
        data = activate(logits, pooling.activation)
        return (data[0], logits[0]) if pooling.task == PoolingTask.CLASSIFY else (data, logits)
    if pooling.dimensions:
        rows = rows[:, : pooling.dimensions]
    if pooling.normalize:
        rows = F.normalize(rows, p=2, dim=-1)
    return (rows[0] if pooling.task == PoolingTask.EMBED else rows), None


def activate(logits: torch.Tensor, activation: str | None) -> torch.Tensor:
    """logits [N, L] → scores [N, L]."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    return logits


def validate_returned_ids(pooling: ResolvedPooling, num_columns: int) -> None:
    """returned_token_ids must index the head's columns (labels, or vocabulary for LM heads)."""
    for i, tid in enumerate(pooling.returned_token_ids or ()):
        if not 0 <= tid < num_columns:
            raise InvalidInputError("pooling.returned_token_ids", f"{tid} is outside 0..{num_columns - 1}", i)

