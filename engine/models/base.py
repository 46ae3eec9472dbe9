"""What the runner needs from a model: packed tokens → hidden states, and a score head.

Every architecture adapter returns a ``PoolingModel``. The runner never looks inside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rewardserve.engine.attention import VarlenMeta, packed_call
from rewardserve.engine.types import PoolingTask, PoolingType

ACTIVATIONS = ("sigmoid", "softmax", "identity")


@dataclass(frozen=True)
class ModelTraits:
    """Static facts about a loaded model that pooling and validation read."""

    architecture: str
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    is_causal: bool = True
    supports_packing: bool = True   # False: the model pads internally (padded fallback)
    num_labels: int = 0             # 0: no score head, so no classify tasks
    labels: tuple[str, ...] = ()
    activation: str = "sigmoid"     # classify default: sigmoid, softmax or identity
    default_pooling: dict[PoolingTask, PoolingType] = field(default_factory=dict)
    normalize: bool = True          # embed default (sentence-transformers Normalize)
    step_tag_id: int | None = None  # STEP default (e.g. Qwen2.5-Math-PRM's <extra_0>)
    returned_token_ids: tuple[int, ...] | None = None  # token_classify default on LM logits
    append_token_id: int | None = None  # appended to text/chat inputs (InternLM2's reward token)
    segment_ids: bool = False       # reads a pair's segment ids (BERT token types; Score pairs)

    def tasks(self) -> tuple[PoolingTask, ...]:
        """Tasks this model can serve: classify tasks need a score head."""
        found = [PoolingTask.EMBED, PoolingTask.TOKEN_EMBED]
        if self.num_labels:
            found = [PoolingTask.CLASSIFY, PoolingTask.TOKEN_CLASSIFY, *found]
        return tuple(t for t in found if t in self.default_pooling)


def default_activation(num_labels: int, problem_type: str | None) -> str:
    """DESIGN.md: sigmoid for one label, softmax for several, identity for regression."""
    if problem_type == "regression":
        return "identity"
    if problem_type == "multi_label_classification":
        return "sigmoid"
    return "sigmoid" if num_labels == 1 else "softmax"


def decoder_pooling(step: bool = False) -> dict[PoolingTask, PoolingType]:
    """Decoder defaults: LAST for sequences, ALL (or STEP for process RMs) for tokens."""
    token = PoolingType.STEP if step else PoolingType.ALL
    return {PoolingTask.CLASSIFY: PoolingType.LAST, PoolingTask.TOKEN_CLASSIFY: token,
            PoolingTask.EMBED: PoolingType.LAST, PoolingTask.TOKEN_EMBED: PoolingType.ALL}


class PoolingModel(nn.Module):
    """Base class of adapters. Subclasses set ``traits`` and implement the two forwards."""

    traits: ModelTraits

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: VarlenMeta) -> torch.Tensor:
        """input_ids, positions [T] (positions restart per sequence) → hidden [T, hidden_size]."""
        raise NotImplementedError

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled hidden [N, hidden_size] → logits [N, num_labels]. Runs only on pooled rows."""
        raise NotImplementedError(f"{self.traits.architecture} has no score head")

    def head_modules(self) -> list[nn.Module]:
        """Modules ``score`` uses; the runner may keep them in float32."""
        return []


def run_hf_packed(backbone: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor,
                  meta: VarlenMeta, **extra) -> torch.Tensor:
    """Run a transformers base model on one packed row: [T] ids → [T, hidden].

    The backbone must have ``config._attn_implementation == ATTN_IMPLEMENTATION``.
    """
    with packed_call(backbone.attn_ctx, meta):  # for decoder layers that drop the packing kwargs on the way down
        out = backbone(input_ids=input_ids[None], position_ids=positions[None], use_cache=False,
                       **meta.as_kwargs(), **extra)
    return out.last_hidden_state[0]


def use_varlen_attention(module: nn.Module) -> None:
    """Switch a transformers model (and every sub-config) to packed varlen attention.

    Attaches a CPU (SDPA) ``AttentionContext``; the runner attaches its own when it takes the model.
    """
    from rewardserve.engine.attention import (ATTN_IMPLEMENTATION, AttentionContext, attach,
                                              register_with_transformers)

    register_with_transformers()
    attach(module, AttentionContext())
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = ATTN_IMPLEMENTATION
