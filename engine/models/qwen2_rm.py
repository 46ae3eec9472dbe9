"""Qwen2.5-Math reward models, loaded without their remote code.

Checkpoint layout (Qwen2.5-Math-RM-72B / Qwen2.5-Math-PRM-7B, config model_type "qwen2"):
``model.*`` is a plain Qwen2 backbone; the head is an MLP

    score.0  Linear(hidden, hidden) (+ bias)   → ReLU →   score.2  Linear(hidden, L) (+ bias)

- ``Qwen2ForRewardModel``: L = 1, one score per sequence at the LAST token, returned raw
  (activation "identity": the reward the model was trained to output).
- ``Qwen2ForProcessRewardModel``: L = 2 (wrong, right), token_classify default pooling STEP at
  the step tag ``<extra_0>`` (its tokenizer id is the default ``step_tag_id``), softmax: column 1
  is the probability that the step is right.
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import ModelTraits, PoolingModel
from rewardserve.engine.models.registry import LoadSpec
from rewardserve.engine.models.seq_cls import PackedDecoder, decoder_traits
from rewardserve.engine.models.weights import build_with_weights, load_state_dict

STEP_TAG = "<extra_0>"
PRM_LABELS = ("negative", "positive")


def load(spec: LoadSpec) -> PoolingModel:
    """Build the Qwen2 backbone from ``model.*`` and the MLP head from ``score.{0,2}``."""
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config.from_dict(spec.hf_config.to_dict())
    if spec.shard is not None:  # tensor parallel: this rank's backbone shard, the head on rank 0
        from rewardserve.engine.models.sharded import sharded_decoder

        return sharded_decoder(replace(spec, hf_config=config), _sharded_head)
    state = load_state_dict(spec.folder)
    config._attn_implementation = "sdpa"  # switched to varlen by PackedDecoder
    backbone_state = {k[len("model."):]: v for k, v in state.items()
                      if k.startswith("model.") and not k.endswith("rotary_emb.inv_freq")}
    backbone = build_with_weights(Qwen2Model, config, backbone_state, spec.dtype)
    head = _mlp_head(state, spec)
    return PackedDecoder(backbone, head, _traits(spec, head))


def _sharded_head(spec: LoadSpec, backbone: nn.Module) -> tuple[nn.Module, ModelTraits]:
    """The score MLP, read alone (``score.*``), and the traits."""
    head = _mlp_head(load_state_dict(spec.folder, keep=lambda name: name.startswith("score.")), spec)
    return head, _traits(spec, head)


def _traits(spec: LoadSpec, head: nn.Sequential) -> ModelTraits:
    """Outcome RM: one raw reward at LAST; process RM: STEP pooling, softmax over (wrong, right)."""
    process = spec.architecture == "Qwen2ForProcessRewardModel"
    num_labels = head[2].out_features
    if process:
        traits = decoder_traits(spec, num_labels=num_labels, activation="softmax", step=True,
                                labels=PRM_LABELS if num_labels == 2 else None,
                                step_tag_id=_step_tag_id(spec))
    else:
        traits = decoder_traits(spec, num_labels=num_labels, activation="identity",
                                labels=("reward",) if num_labels == 1 else None)
    return traits


def _mlp_head(state: dict, spec: LoadSpec) -> nn.Sequential:
    """score.0 [H, H] (+ bias [H]) → ReLU → score.2 [L, H] (+ bias [L]), weights copied in."""
    for name in ("score.0.weight", "score.2.weight"):
        if name not in state:
            raise EngineError(f"{spec.folder}: {spec.architecture} checkpoint has no {name}")
    first, last = state["score.0.weight"], state["score.2.weight"]
    head = nn.Sequential(
        nn.Linear(first.shape[1], first.shape[0], bias="score.0.bias" in state, device="meta"),
        nn.ReLU(),
        nn.Linear(last.shape[1], last.shape[0], bias="score.2.bias" in state, device="meta"))
    head_state = {k[len("score."):]: v.to(spec.dtype) for k, v in state.items() if k.startswith("score.")}
    head.load_state_dict(head_state, strict=True, assign=True)
    return head


def _step_tag_id(spec: LoadSpec) -> int | None:
    """The architecture default: the tokenizer's ``<extra_0>`` id, if it has one.

    A ``--pooler-config`` / request ``step_tag_id`` overrides it in pooling.py, not here.
    """
    tok = spec.tokenizer
    if tok is None or STEP_TAG not in tok.get_vocab():
        return None
    return int(tok.convert_tokens_to_ids(STEP_TAG))
