"""Padded fallback for layers that cannot take packed sequences (Jamba's Mamba layers, ...).

A state-space layer scans along the row, so a packed row would carry state from one
sequence into the next. This adapter keeps the runner's packed interface but, inside
``forward_hidden``, unpacks the row into right-padded batches ``[B, L]`` with an
``attention_mask``, runs the transformers model with its own attention (sdpa/eager, not
varlen) and gathers the real positions back into ``[T, H]``.

Right padding is exact for causal models: a real token only sees itself and earlier tokens
(causal attention, causal conv1d, left-to-right scan), never the pads after it; Jamba also
zeroes padded states before its conv and scan. Only the head differs from transformers'
``*ForSequenceClassification.forward``: it runs on the pooled rows instead of every token.

Sequences are sorted by length and cut into groups so that a group's padded cells
(rows x longest) stay within the packed token count: padding never costs more memory than
the packed batch itself, plus one longest row.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import ModelTraits, PoolingModel, decoder_pooling, default_activation
from rewardserve.engine.models.registry import LoadSpec


def padded_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Sequence indices in groups, longest first, with ``rows * longest <= budget``
    (a group of one may exceed it: a sequence is never split)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class PaddedModel(PoolingModel):
    """A transformers model run on right-padded batches behind the packed interface."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, traits: ModelTraits, pad_token_id: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.traits = traits
        self.pad_token_id = pad_token_id
        # Pure Mamba models take no position_ids; rotary hybrids (Bamba, Zamba) need them.
        self.takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: VarlenMeta) -> torch.Tensor:
        """input_ids, positions [T] (packed) → hidden [T, H], computed group by group, padded."""
        cu = meta.cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        total = int(input_ids.shape[0])
        out = None
        for group in padded_groups(lengths, max(total, meta.max_seqlen)):
            index, valid = self._layout(group, cu, lengths, input_ids.device)  # [b, L] each
            hidden = self._run_padded(input_ids, positions, index, valid)      # [b, L, H]
            if out is None:
                out = hidden.new_empty(total, hidden.shape[-1])
            out[index[valid]] = hidden[valid]
        return out

    @staticmethod
    def _layout(group: list[int], cu: list[int], lengths: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed-row index of every padded cell [b, L] and which cells are real [b, L] bool."""
        starts = torch.tensor([cu[i] for i in group], device=device)
        lens = torch.tensor([lengths[i] for i in group], device=device)
        cols = torch.arange(int(lens.max()), device=device)
        valid = cols[None, :] < lens[:, None]
        index = torch.where(valid, starts[:, None] + cols[None, :], 0)
        return index, valid

    def _run_padded(self, input_ids, positions, index, valid) -> torch.Tensor:
        """One right-padded forward: pads get ``pad_token_id`` and position 0, mask 0."""
        ids = torch.where(valid, input_ids[index], self.pad_token_id)  # [b, L]
        pos = torch.where(valid, positions[index], 0)                   # [b, L]
        extra = {"position_ids": pos} if self.takes_positions else {}
        out = self.backbone(input_ids=ids, attention_mask=valid.long(), use_cache=False, **extra)
        return out.last_hidden_state

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled hidden [N, H] (LAST rows) → logits [N, num_labels] through the model's ``score``."""
        if self.head is None:
            raise NotImplementedError(f"{self.traits.architecture} has no score head")
        return self.head(hidden)

    def head_modules(self) -> list[nn.Module]:
        return [self.head] if self.head is not None else []


def _load_hf(spec: LoadSpec, cfg) -> tuple[nn.Module, nn.Module | None]:
    """(backbone, score head or None), built on the CPU in ``spec.dtype`` with sdpa attention."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    arch = spec.architecture
    if arch.endswith("ForSequenceClassification"):
        hf = AutoModelForSequenceClassification.from_pretrained(str(spec.folder), config=cfg, dtype=spec.dtype)
        head = getattr(hf, "score", None)
        if not isinstance(head, nn.Module):
            raise EngineError(f"{arch}: no `score` head found for the padded fallback")
        return hf.base_model, head
    if arch.endswith("Model") or not arch:
        return AutoModel.from_pretrained(str(spec.folder), config=cfg, dtype=spec.dtype), None
    raise EngineError(f"architecture {arch} is not supported by the padded fallback "
                      "(use its *ForSequenceClassification or base *Model checkpoint)")


def _max_len(spec: LoadSpec, cfg) -> int:
    """The config's position limit; pure state-space models have none (then --max-model-len or 2**20)."""
    limit = getattr(cfg, "max_position_embeddings", None)
    return int(limit or spec.model_config.max_model_len or 1 << 20)


def load(spec: LoadSpec) -> PaddedModel:
    """Build the padded fallback for ``spec`` (CPU, ``spec.dtype``, the model's own attention)."""
    cfg = copy.deepcopy(spec.hf_config)
    backbone, head = _load_hf(spec, cfg)
    num_labels = int(cfg.num_labels) if head is not None else 0
    id2label = getattr(cfg, "id2label", None) or {}
    traits = ModelTraits(
        architecture=spec.architecture or type(cfg).__name__, hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size, max_position_embeddings=_max_len(spec, cfg),
        is_causal=True, supports_packing=False, num_labels=num_labels,
        labels=tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)),
        activation=default_activation(num_labels, getattr(cfg, "problem_type", None)) if num_labels else "identity",
        default_pooling=decoder_pooling())
    pad = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
    return PaddedModel(backbone, head, traits, pad)
