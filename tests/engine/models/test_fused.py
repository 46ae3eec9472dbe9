"""Fused q/k/v and gate/up projections compute what transformers' separate projections compute."""
from __future__ import annotations

import pytest
import torch

from rewardserve.engine.models.fused import fuse_projections
from test_decoders import BUILDERS
from tiny_decoders import load, packed_hidden, random_inputs


def _unfused(name, ckpt):
    """The family's tiny model as loaded (unfused), its inputs and their packed hidden states."""
    BUILDERS[name]().save_pretrained(str(ckpt))
    model = load(ckpt, speed_ups=False)
    seqs = random_inputs(seed=5)
    return model, seqs, packed_hidden(model, seqs)


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3"])
def test_fused_model_matches_unfused(name, ckpt):
    """Qwen2: q/k/v biases and a sliding-window layer; Qwen3: per-head q/k norms; Mistral: a window;
    Gemma2: soft-capping and a window layer; Gemma3: q/k norms, a window layer, two rotary tables."""
    model, seqs, want = _unfused(name, ckpt)
    assert fuse_projections(model) == 2 * len(model.backbone.layers)  # every attention and every MLP
    layer = model.backbone.layers[0]
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "gate_proj")
    assert (packed_hidden(model, seqs) - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["stablelm", "phi3", "olmo2"])
def test_other_families_keep_their_own_forward(name, ckpt):
    model, seqs, want = _unfused(name, ckpt)
    assert fuse_projections(model) == 0
    assert torch.equal(packed_hidden(model, seqs), want)
