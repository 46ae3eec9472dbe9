"""The attention state belongs to the runner: its ``AttentionContext`` is attached to every module
of its model, and the hook reads the kernel and the active packing from there."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rewardserve.engine import attention


def test_the_runner_owns_its_models_attention_context(demo_engine):
    runner = demo_engine.core.runner
    ctx = runner.attention
    assert isinstance(ctx, attention.AttentionContext) and ctx.backend == "sdpa"
    assert all(attention.context_of(m) is ctx for m in runner.model.modules())
    assert ctx.meta is None and not ctx.cuda_fallback_used()  # CPU: the SDPA loop is no fallback


def test_the_hook_reads_the_packing_from_its_own_context_when_kwargs_are_dropped():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 7, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)  # [1, H, T, D]
    meta = attention.VarlenMeta(torch.tensor([0, 3, 7], dtype=torch.int32), 4)
    mine, other = attention.AttentionContext(), attention.AttentionContext()
    layer, stranger = nn.Module(), nn.Module()
    attention.attach(layer, mine)
    attention.attach(stranger, other)
    with pytest.raises(RuntimeError, match="without cu_seqlens"):
        attention.hf_attention_forward(layer, q, k, v, None)
    with attention.packed_call(mine, meta):
        got, _ = attention.hf_attention_forward(layer, q, k, v, None)     # packing from the context
        with pytest.raises(RuntimeError, match="without cu_seqlens"):  # another model's context is empty
            attention.hf_attention_forward(stranger, q, k, v, None)
    assert mine.meta is None
    want, _ = attention.hf_attention_forward(layer, q, k, v, None, **meta.as_kwargs())
    assert got.shape == (1, 7, 4, 16) and torch.equal(got, want)
