"""Encoders (BERT family) and sentence-transformers folders, run packed with varlen attention.

One packed row goes through the transformers encoder: bidirectional attention stays inside
each sequence (``cu_seqlens``), absolute position ids restart per sequence and token types
are explicit (zeros, or a Score pair's segment ids). Heads run on pooled rows only:

- ``BertForSequenceClassification``: BERT pooler (dense + tanh) on the CLS row, then classifier.
- RoBERTa / XLM-R / ELECTRA style heads (``dense → act → out_proj`` reading ``features[:, 0]``)
  are called on the pooled rows as one-token sequences ``[N, 1, H]``.

A ``modules.json`` (sentence-transformers) sets the embed pooling and normalisation. The
registry also sends decoder folders with a ``modules.json`` here (e.g. a Qwen3 embedder with
last-token pooling); they run causal with plain positions.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import (ModelTraits, PoolingModel, default_activation, run_hf_packed,
                                            use_varlen_attention)
from rewardserve.engine.models.registry import ENCODER_TYPES, LoadSpec
from rewardserve.engine.staging import split_segments
from rewardserve.engine.types import PoolingTask, PoolingType

# RoBERTa-style embeddings number positions from pad_token_id + 1 (padding_idx is reserved).
_OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "camembert"}
# Encoders whose packed path is not proven here (rotary + local attention, unpadding inside).
_UNSUPPORTED_TYPES = {"modernbert"}
# sentence-transformers Pooling flags we can express as a PoolingType.
_ST_POOLING = {"pooling_mode_cls_token": PoolingType.CLS, "pooling_mode_mean_tokens": PoolingType.MEAN,
               "pooling_mode_lasttoken": PoolingType.LAST}
_ST_POOLING_NAMES = {"cls": PoolingType.CLS, "mean": PoolingType.MEAN, "lasttoken": PoolingType.LAST}


class _FirstTokenReLU(nn.Module):
    """DistilBERT's pre-classifier: ReLU(linear(features[:, 0])), [N, 1, H] → [N, H]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(rows[:, 0]))


class EncoderModel(PoolingModel):
    """A transformers encoder (or ST decoder) on one packed row, plus an optional head."""

    def __init__(self, backbone: nn.Module, traits: ModelTraits, *, position_offset: int = 0,
                 token_types: bool = False, pooler: nn.Module | None = None,
                 classifier: nn.Module | None = None, seq_head: bool = False):
        super().__init__()
        self.backbone = backbone
        self.traits = traits
        self.position_offset = position_offset
        self.token_types = token_types
        self.pooler = pooler          # BertPooler (dense + tanh on row 0) or None
        self.classifier = classifier  # nn.Linear (BERT) or a RoBERTa-style head module
        self.seq_head = seq_head      # classifier reads features[:, 0] itself

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: VarlenMeta) -> torch.Tensor:
        """input_ids, positions [T] → hidden [T, H]; attention never crosses ``cu_seqlens``.

        ``positions`` may carry segment ids (Score pairs, ``staging.SEGMENT_SHIFT``): they become
        the token types (explicit: the buffered default is only max_position long)."""
        positions, segments = split_segments(positions)
        extra = {}
        if self.token_types:
            extra["token_type_ids"] = segments[None]  # [1, T]
        return run_hf_packed(self.backbone, input_ids, positions + self.position_offset, meta, **extra)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled hidden [N, H] (the CLS rows for BERT) → logits [N, num_labels]."""
        if self.classifier is None:
            raise NotImplementedError(f"{self.traits.architecture} has no score head")
        rows = hidden[:, None, :]  # [N, 1, H]: HF heads and poolers read features[:, 0]
        if self.seq_head:
            return self.classifier(rows)
        pooled = self.pooler(rows) if self.pooler is not None else hidden  # [N, H]
        return self.classifier(pooled)

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.pooler, self.classifier) if m is not None]


def read_sentence_transformers(folder: Path) -> dict | None:
    """Parse ``modules.json``: ``{"pooling": PoolingType | None, "normalize": bool,
    "max_seq_length": int | None}``, or None when the folder is not a sentence-transformers one.

    Modules we cannot reproduce (Dense, a Transformer in a sub-folder, unusual pooling modes)
    are refused rather than silently skipped: the embeddings would be wrong.
    """
    path = folder / "modules.json"
    if not path.exists():
        return None
    found = {"pooling": None, "normalize": False, "max_seq_length": None}
    for module in json.loads(path.read_text()):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        sub = module.get("path", "")
        if kind == "Transformer":
            if sub not in ("", "."):
                raise EngineError(f"modules.json: Transformer in sub-folder {sub!r} is not supported")
            found["max_seq_length"] = _st_max_seq_length(folder)
        elif kind == "Pooling":
            found["pooling"] = _st_pooling(json.loads((folder / sub / "config.json").read_text()))
        elif kind == "Normalize":
            found["normalize"] = True
        else:
            raise EngineError(f"modules.json: sentence-transformers module {module.get('type')!r} is not supported")
    return found


def _st_pooling(cfg: dict) -> PoolingType:
    """One pooling mode from a ``1_Pooling/config.json`` (flag style or ``pooling_mode`` name)."""
    if isinstance(cfg.get("pooling_mode"), str):
        chosen = [cfg["pooling_mode"]]
    else:
        chosen = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if len(chosen) == 1 and (chosen[0] in _ST_POOLING or chosen[0] in _ST_POOLING_NAMES):
        return _ST_POOLING.get(chosen[0]) or _ST_POOLING_NAMES[chosen[0]]
    raise EngineError(f"sentence-transformers pooling {chosen or 'none'} is not supported "
                      "(one of cls, mean, lasttoken)")


def _st_max_seq_length(folder: Path) -> int | None:
    path = folder / "sentence_bert_config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("max_seq_length")


def _load_hf(spec: LoadSpec, cfg) -> nn.Module:
    """Build the checkpoint's transformers model on the CPU in ``spec.dtype``."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if spec.architecture.endswith("ForSequenceClassification") else AutoModel
    return auto.from_pretrained(str(spec.folder), config=cfg, dtype=spec.dtype)


def _split_head(hf: nn.Module) -> tuple[nn.Module, nn.Module | None, nn.Module | None, bool]:
    """(backbone, pooler, classifier, seq_head) of a transformers encoder model."""
    backbone = hf.base_model
    # Detach BERT's pooler: the backbone would otherwise run it on row 0 of the packed batch
    # (wasted, and a dtype clash once the runner moves head modules to float32).
    bert_pooler = getattr(backbone, "pooler", None)
    if bert_pooler is not None:
        backbone.pooler = None
    classifier = getattr(hf, "classifier", None) if backbone is not hf else None
    if classifier is None:
        return backbone, None, None, False
    if isinstance(getattr(hf, "pre_classifier", None), nn.Linear):  # DistilBERT
        return backbone, _FirstTokenReLU(hf.pre_classifier), classifier, False
    if isinstance(classifier, nn.Linear):  # BERT: pooler (if any) then the linear classifier
        return backbone, bert_pooler, classifier, False
    return backbone, None, classifier, True


def _traits(spec: LoadSpec, cfg, num_labels: int, causal: bool, st: dict | None, offset: int) -> ModelTraits:
    seq = PoolingType.LAST if causal else PoolingType.CLS
    embed = (st or {}).get("pooling") or seq
    pooling = {PoolingTask.CLASSIFY: seq, PoolingTask.TOKEN_CLASSIFY: PoolingType.ALL,
               PoolingTask.EMBED: embed, PoolingTask.TOKEN_EMBED: PoolingType.ALL}
    max_len = cfg.max_position_embeddings - offset
    if st and st["max_seq_length"]:
        max_len = min(max_len, int(st["max_seq_length"]))
    id2label = getattr(cfg, "id2label", None) or {}
    labels = tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels))
    return ModelTraits(
        architecture=spec.architecture or type(spec.hf_config).__name__, hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size, max_position_embeddings=max_len, is_causal=causal,
        num_labels=num_labels, labels=labels,
        activation=default_activation(num_labels, getattr(cfg, "problem_type", None)) if num_labels else "identity",
        default_pooling=pooling, normalize=st["normalize"] if st else True,
        segment_ids=not causal and getattr(cfg, "type_vocab_size", 0) > 1)


def load(spec: LoadSpec) -> EncoderModel:
    """Build the packed encoder for ``spec`` (CPU, ``spec.dtype``, varlen attention)."""
    model_type = getattr(spec.hf_config, "model_type", "")
    if model_type in _UNSUPPORTED_TYPES:
        raise EngineError(f"encoder type {model_type!r} is not supported yet")
    st = read_sentence_transformers(spec.folder)
    cfg = copy.deepcopy(spec.hf_config)  # use_varlen_attention edits the config in place
    hf = _load_hf(spec, cfg)
    backbone, pooler, classifier, seq_head = _split_head(hf)
    causal = model_type not in ENCODER_TYPES or bool(getattr(cfg, "is_decoder", False))
    offset = cfg.pad_token_id + 1 if model_type in _OFFSET_POSITION_TYPES else 0
    token_types = not causal and getattr(cfg, "type_vocab_size", 0) > 0
    num_labels = int(cfg.num_labels) if classifier is not None else 0
    use_varlen_attention(backbone)
    traits = _traits(spec, cfg, num_labels, causal, st, offset)
    return EncoderModel(backbone, traits, position_offset=offset, token_types=token_types,
                        pooler=pooler, classifier=classifier, seq_head=seq_head)
