"""Host staging rows (one host→device copy per batch) and the CUDA-graph padding scheme, on the CPU.

The graph path pads a batch to a token bucket with one dummy sequence and zero-length sequences;
here the same padded layout runs through the eager forward and must give the unpadded rows.
"""
from __future__ import annotations

import random

import torch

from engine_testlib import pack_token_ids

from rewardserve.engine import staging
from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.batch import PackedBatch


class Item:
    def __init__(self, ids: list[int], positions: list[int]):
        self.token_ids = ids
        self.positions = positions


def items(seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for n in (1, 5, 64, 17, 120):
        ids = [rng.randrange(1, 400) for _ in range(n)]
        out.append(Item(ids, [n - 1] if n % 2 else list(range(n))))  # LAST or ALL pooling
    return out


def staged(batch: list[Item], tok_cap: int | None = None, seq_cap: int | None = None):
    plan = PackedBatch.of(batch)
    layout = staging.Layout(tok_cap or plan.num_tokens, seq_cap or plan.num_seqs, plan.num_rows)
    host = torch.empty(layout.total, dtype=torch.int64)
    array = host.numpy()
    array[:] = -7  # poison: every region must be written
    staging.fill(array, plan, layout)
    return plan, layout, host


def test_staging_row_matches_pack_token_ids():
    batch = items()
    plan, layout, host = staged(batch)
    ids, positions, cu, gather = layout.views(host)
    ref = pack_token_ids([it.token_ids for it in batch])
    assert torch.equal(ids, ref.input_ids) and torch.equal(positions, ref.positions)
    assert torch.equal(cu.to(torch.int32), ref.cu_seqlens)
    starts = ref.cu_seqlens[:-1].tolist()
    assert gather.tolist() == [s + p for it, s in zip(batch, starts) for p in it.positions]
    assert plan.max_seqlen == 120 and plan.num_tokens == 207
    assert all(start % staging.ALIGN == 0 for start in (layout.pos_start, layout.cu_start, layout.gather_start))


def test_padded_layout_gives_the_unpadded_rows(demo_engine):
    """Bucket 256 and room for 10 sequences: a dummy sequence plus zero-length ones."""
    model = demo_engine.core.runner.model
    batch = items(seed=3)
    plan, layout, host = staged(batch)
    _, padded_layout, padded_host = staged(batch, tok_cap=256, seq_cap=10)
    ids, pos, cu, _ = padded_layout.views(padded_host)
    assert cu.tolist()[plan.num_seqs:] == [plan.num_tokens] + [256] * (10 - plan.num_seqs)
    assert ids[plan.num_tokens:].eq(0).all() and pos[plan.num_tokens:].eq(0).all()
    with torch.no_grad():
        want = model.forward_hidden(*layout.views(host)[:2], VarlenMeta(layout.views(host)[2].int(), plan.max_seqlen))
        got = model.forward_hidden(ids, pos, VarlenMeta(cu.int(), 256))
    assert got.shape[0] == 256
    assert (got[:plan.num_tokens] - want).abs().max().item() <= 1e-5
