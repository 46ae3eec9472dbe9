"""Host-side packing for the runner: one int64 staging row per batch, built with numpy.

Everything a forward pass needs from the host travels in ONE host→device copy (the runner
writes the row into pinned memory from torch's caching host allocator, which keeps a block until
the copy that reads it is done, so batches can be launched back to back). Layout of the
row (int64, each region starting on a multiple of ``ALIGN`` elements)::

    [input_ids: tok_cap][positions: tok_cap][cu_seqlens: seq_cap + 1][prefix: 2 (4) x seq_cap]
    [table: cache_blocks][slots: tok_cap][gather: num_rows]

``tok_cap``/``seq_cap`` are the real token/sequence counts for an eager or compiled forward, and
the bucket's capacities for a CUDA-graph replay. Graph padding: tokens ``T..tok_cap`` form one
dummy sequence (ids 0, positions 0: always a valid position), and the ``cu_seqlens`` entries after it repeat
``tok_cap`` (zero-length sequences), so the real sequences never attend to padding.
``gather`` holds the packed row of every pooled position, item after item.

``prefix`` (only in a layout made with ``prefix=True``: prefix reuse on) holds, per sequence,
the first row of the prefix segment it also attends to, then (second half) that segment's
length; 0 and 0 for a sequence without one, and for the padding. Its positions continue after
the prefix (``engine/prefix.py``). Prefix reuse keeps this one layout for every batch, so
compiled graphs and CUDA graphs see one input signature whether a batch shares prefixes or not.

With the prefix cache (``cache_blocks`` > 0, ``engine/prefix_cache.py``) the prefix region has
two more rows: the tokens each sequence reads from cached blocks, and where its blocks start in
``table`` (a fixed ``cache_blocks`` entries: block ids); ``slots`` gives the pool row every packed
token's keys and values are written to (-1: not stored).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import torch

from rewardserve.engine.batch import PackedBatch

if TYPE_CHECKING:
    from rewardserve.engine.prefix_cache import CachedBatch

ALIGN = 8  # 64-byte aligned regions: compiled kernels assume aligned inputs
# Segment ids (BERT pairs, Score) ride in the positions region above this bit: the row, the
# compiled forward and the CUDA graphs keep one layout; encoders split them (``split_segments``).
SEGMENT_SHIFT = 32


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Layout:
    """Where each region of a staging row starts (in elements)."""

    tok_cap: int
    seq_cap: int  # number of sequences the cu_seqlens region describes
    num_rows: int
    prefix: bool = False  # has the prefix region (2 x seq_cap; 4 x seq_cap with the cache)
    cache_blocks: int = 0  # block-table entries (0: no prefix cache, no table and slots regions)

    @property
    def prefix_rows(self) -> int:
        return 4 if self.cache_blocks else 2

    @property
    def pos_start(self) -> int:
        return _up(self.tok_cap)

    @property
    def cu_start(self) -> int:
        return self.pos_start + _up(self.tok_cap)

    @property
    def prefix_start(self) -> int:
        return self.cu_start + _up(self.seq_cap + 1)

    @property
    def table_start(self) -> int:
        return self.prefix_start + (_up(self.prefix_rows * self.seq_cap) if self.prefix else 0)

    @property
    def slots_start(self) -> int:
        return self.table_start + _up(self.cache_blocks)

    @property
    def gather_start(self) -> int:
        return self.slots_start + (_up(self.tok_cap) if self.cache_blocks else 0)

    @property
    def total(self) -> int:
        return self.gather_start + self.num_rows

    def views(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """row [>= total] → input_ids [tok_cap], positions [tok_cap], cu_seqlens [seq_cap + 1] (int64),
        gather [num_rows]."""
        return (row[:self.tok_cap], row[self.pos_start:self.pos_start + self.tok_cap],
                row[self.cu_start:self.cu_start + self.seq_cap + 1],
                row[self.gather_start:self.gather_start + self.num_rows])

    def prefix_view(self, row: torch.Tensor) -> torch.Tensor | None:
        """row → prefix [2, seq_cap] (first row of each sequence's prefix segment; its length),
        [4, seq_cap] with the cache (then cached tokens; table offset), or None without the region."""
        if not self.prefix:
            return None
        n = self.prefix_rows * self.seq_cap
        return row[self.prefix_start:self.prefix_start + n].view(self.prefix_rows, self.seq_cap)

    def cache_views(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """row → (table [cache_blocks], slots [tok_cap]), or None without the cache."""
        if not self.cache_blocks:
            return None
        return (row[self.table_start:self.table_start + self.cache_blocks],
                row[self.slots_start:self.slots_start + self.tok_cap])


def fill(row: np.ndarray, p: PackedBatch, layout: Layout, cache: "CachedBatch | None" = None) -> None:
    """Write a batch into ``row`` (int64 numpy view of the staging buffer) following ``layout``;
    ``cache`` (the batch as the prefix cache assigned it) fills the table and slots regions."""
    if p.prefix is not None and not layout.prefix:
        raise ValueError("a batch with shared prefixes needs a layout with the prefix region")
    t, cap = p.num_tokens, layout.tok_cap
    starts = np.zeros(p.num_seqs, dtype=np.int64)   # [S] first row of each segment
    np.cumsum(p.lengths[:-1], out=starts[1:])
    ids = row[:cap]
    pos = row[layout.pos_start:layout.pos_start + cap]
    if p.prefix is None:
        _fill_items(ids, pos, p, starts)
    else:
        _fill_segments(ids, pos, p, starts)
    ids[t:] = 0
    pos[t:] = 0  # the dummy padding sequence
    cu = row[layout.cu_start:layout.cu_start + layout.seq_cap + 1]
    cu[0] = 0
    np.cumsum(p.lengths, out=cu[1:p.num_seqs + 1])
    cu[p.num_seqs + 1:] = cap  # padding sequence, then zero-length sequences
    if layout.prefix:
        _fill_prefix(row[layout.prefix_start:layout.prefix_start + layout.prefix_rows * layout.seq_cap], p, starts,
                     layout.seq_cap)
    if layout.cache_blocks:
        _fill_cache(row, layout, starts, cache)
    row[layout.gather_start:layout.gather_start + p.num_rows] = _gather_rows(p, starts)


def _fill_items(ids: np.ndarray, pos: np.ndarray, p: PackedBatch, starts: np.ndarray) -> None:
    """One segment per item: ids, positions from 0, segment ids above ``SEGMENT_SHIFT``."""
    items, t = p.items, p.num_tokens
    ids[:t] = np.fromiter(chain.from_iterable(it.token_ids for it in items), dtype=np.int64, count=t)
    pos[:t] = np.arange(t, dtype=np.int64) - np.repeat(starts, p.lengths)
    if any(getattr(it, "token_type_ids", None) for it in items):
        segments = chain.from_iterable(it.token_type_ids or [0] * len(it.token_ids) for it in items)
        pos[:t] |= np.fromiter(segments, dtype=np.int64, count=t) << SEGMENT_SHIFT


def _fill_segments(ids: np.ndarray, pos: np.ndarray, p: PackedBatch, starts: np.ndarray) -> None:
    """Shared prefixes: each segment is a slice of its item; a suffix's positions continue after
    its prefix (the positions the whole sequence would give those tokens)."""
    plan, items, t = p.prefix, p.items, p.num_tokens
    spans = list(zip(plan.src_item.tolist(), plan.starts.tolist(), plan.lengths.tolist()))
    ids[:t] = np.fromiter(chain.from_iterable(items[i].token_ids[a:a + n] for i, a, n in spans),
                          dtype=np.int64, count=t)
    pos[:t] = np.arange(t, dtype=np.int64) - np.repeat(starts - plan.starts, plan.lengths)


def _fill_prefix(region: np.ndarray, p: PackedBatch, starts: np.ndarray, seq_cap: int) -> None:
    """[2 (4) x seq_cap]: first row of each segment's prefix segment, then its length (0, 0: none);
    with the cache, then the tokens it reads from cached blocks and their table offset."""
    region[:] = 0
    if p.prefix is None:
        return
    plan, n = p.prefix, p.num_seqs
    has = plan.prefix_seg >= 0
    region[:n][has] = starts[plan.prefix_seg[has]]
    region[seq_cap:seq_cap + n][has] = plan.lengths[plan.prefix_seg[has]]
    if region.shape[0] >= 4 * seq_cap and plan.cached is not None:
        region[2 * seq_cap:2 * seq_cap + n] = plan.cached
        region[3 * seq_cap:3 * seq_cap + n] = plan.table_off


def _fill_cache(row: np.ndarray, layout: Layout, starts: np.ndarray, cache: "CachedBatch | None") -> None:
    """Block table, and the pool row of every packed token: a stored block's tokens go to its
    block; every other row has slot -1 (not stored)."""
    table = row[layout.table_start:layout.table_start + layout.cache_blocks]
    slots = row[layout.slots_start:layout.slots_start + layout.tok_cap]
    table[:] = 0
    slots[:] = -1  # nothing to store
    if cache is None:
        return
    if len(cache.table) > layout.cache_blocks:
        raise ValueError(f"block table of {len(cache.table)} entries exceeds the layout's {layout.cache_blocks}")
    table[:len(cache.table)] = cache.table
    block = cache.block_tokens
    w = cache.writes
    if len(w.dest):
        offs = np.arange(block, dtype=np.int64)
        rows = (starts[w.seg] + w.block * block)[:, None] + offs           # [W, B]
        slots[rows.reshape(-1)] = ((w.dest * block)[:, None] + offs).reshape(-1)


def _gather_rows(p: PackedBatch, starts: np.ndarray) -> np.ndarray:
    """The packed row of every pooled position [num_rows]; with shared prefixes a position in the
    prefix reads the prefix segment's row (MEAN, ALL and STEP cover the whole sequence)."""
    rows = np.fromiter(chain.from_iterable(it.positions for it in p.items), dtype=np.int64, count=p.num_rows)
    if p.prefix is None:
        return rows + np.repeat(starts, p.row_counts)
    plan = p.prefix
    pre_seg = plan.prefix_seg[plan.item_seg]                            # [n] its prefix segment (-1: none)
    per_row = lambda values: np.repeat(values, p.row_counts)            # noqa: E731  [n] → [num_rows]
    # A position inside the shared prefix reads the prefix segment's row, any other its own
    # segment's; a segment's first row holds item token ``plan.starts`` (past any cached tokens).
    seg = np.where(rows < per_row(plan.shared), per_row(pre_seg), per_row(plan.item_seg))
    return starts[seg] + rows - plan.starts[seg]


def split_segments(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed positions [T] (int64) → (positions [T], segment ids [T]); see ``SEGMENT_SHIFT``."""
    return positions & ((1 << SEGMENT_SHIFT) - 1), positions >> SEGMENT_SHIFT
