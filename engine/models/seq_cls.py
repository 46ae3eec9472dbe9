"""Decoder ``*ForSequenceClassification`` checkpoints (Llama, Qwen2, Qwen3, Mistral, Gemma2, ...).

transformers builds the model; we keep its base model as the packed backbone and its ``score``
Linear(hidden, num_labels) as the head, run only on pooled rows. transformers' forward scores
every token then keeps the last non-pad one per row; LAST pooling of the packed hidden states
followed by ``score`` is the same number.

Gemma2: ``final_logit_softcapping`` is applied only by ``Gemma2ForCausalLM``; the sequence
classifier is ``GenericForSequenceClassification`` (score of the last hidden state, no cap), so
we apply none either. Attention soft-capping and sliding windows live in the backbone and are
handled by the varlen attention function.

``PackedDecoder`` is shared by the other decoder adapters (qwen2_rm, internlm2, causal_lm).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import (ModelTraits, PoolingModel, decoder_pooling, default_activation,
                                            run_hf_packed, use_varlen_attention)
from rewardserve.engine.models.registry import LoadSpec


class PackedDecoder(PoolingModel):
    """A transformers base model run on packed rows, plus an optional head module."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, traits: ModelTraits):
        super().__init__()
        use_varlen_attention(backbone)
        self.backbone = backbone
        self.head = head
        self.traits = traits

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: VarlenMeta) -> torch.Tensor:
        """input_ids, positions [T] → last hidden state [T, hidden] (after the final norm)."""
        return run_hf_packed(self.backbone, input_ids, positions, meta)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled hidden [N, hidden] → logits [N, num_labels], in the head's dtype."""
        if self.head is None:
            return super().score(hidden)
        param = next(self.head.parameters())
        return self.head(hidden.to(param.dtype))

    def head_modules(self) -> list[nn.Module]:
        return [self.head] if self.head is not None else []


def text_config(hf_config: Any) -> Any:
    """The decoder's own config (multimodal configs nest it; plain configs are their own)."""
    get = getattr(hf_config, "get_text_config", None)
    return get() if callable(get) else hf_config


def config_labels(hf_config: Any, num_labels: int) -> tuple[str, ...]:
    """Label names by index from ``id2label``; ``LABEL_i`` where the config names none."""
    id2label = getattr(hf_config, "id2label", None) or {}
    names = {int(k): str(v) for k, v in id2label.items()}
    return tuple(names.get(i, f"LABEL_{i}") for i in range(num_labels))


def decoder_traits(spec: LoadSpec, *, num_labels: int, activation: str, step: bool = False,
                   labels: tuple[str, ...] | None = None, **extra: Any) -> ModelTraits:
    """ModelTraits of a causal decoder read from its config (sizes, positions, labels)."""
    cfg = text_config(spec.hf_config)
    return ModelTraits(
        architecture=spec.architecture,
        hidden_size=int(cfg.hidden_size),
        vocab_size=int(cfg.vocab_size),
        max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 0) or 0),
        is_causal=True,
        num_labels=num_labels,
        labels=labels if labels is not None else config_labels(spec.hf_config, num_labels),
        activation=activation,
        default_pooling=decoder_pooling(step=step),
        **extra,
    )


def load(spec: LoadSpec) -> PoolingModel:
    """Load any decoder ``*ForSequenceClassification`` with transformers (no remote code); under
    tensor parallelism this rank's backbone shard, and the ``score`` head on rank 0."""
    from transformers import AutoModelForSequenceClassification

    if spec.shard is not None:
        from rewardserve.engine.models.sharded import sharded_decoder

        return sharded_decoder(spec, _sharded_head)

    hf = AutoModelForSequenceClassification.from_pretrained(str(spec.folder), dtype=spec.dtype,
                                                            trust_remote_code=False)
    backbone = getattr(hf, hf.base_model_prefix, None) or hf.base_model
    head = getattr(hf, "score", None) or getattr(hf, "classifier", None)  # Linear(hidden, num_labels)
    if not isinstance(head, nn.Linear):
        raise EngineError(f"{spec.architecture}: no Linear score head (expected .score or .classifier)")
    num_labels = int(head.out_features)
    activation = default_activation(num_labels, getattr(spec.hf_config, "problem_type", None))
    return PackedDecoder(backbone, head, decoder_traits(spec, num_labels=num_labels, activation=activation))


def _sharded_head(spec: LoadSpec, backbone: nn.Module) -> tuple[nn.Module, ModelTraits]:
    """The ``score`` Linear(hidden, num_labels) read from the checkpoint, and the traits."""
    from rewardserve.engine.models.sharded import read_linear

    head = read_linear(spec.folder, "score", spec.dtype)
    if head is None:
        raise EngineError(f"{spec.architecture}: no Linear score head (expected score.weight in the checkpoint)")
    num_labels = int(head.out_features)
    activation = default_activation(num_labels, getattr(spec.hf_config, "problem_type", None))
    return head, decoder_traits(spec, num_labels=num_labels, activation=activation)
