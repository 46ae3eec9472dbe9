"""Host-side packing for the runner: one int64 staging row per batch, built with numpy.

Everything a forward pass needs from the host travels in ONE host→device copy (the runner
writes the row into pinned memory from torch's caching host allocator, which keeps a block until
the copy that reads it is done, so batches can be launched back to back). Layout of the
row (int64, each region starting on a multiple of ``ALIGN`` elements)::

    [input_ids: tok_cap][positions: tok_cap][cu_seqlens: seq_cap + 1][gather: num_rows]

``tok_cap``/``seq_cap`` are the real token/sequence counts for an eager or compiled forward, and
the bucket's capacities for a CUDA-graph replay. Graph padding: tokens ``T..tok_cap`` form one
dummy sequence (ids 0, positions 0: always a valid position), and the ``cu_seqlens`` entries after it repeat
``tok_cap`` (zero-length sequences), so the real sequences never attend to padding.
``gather`` holds the packed row of every pooled position, item after item.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from rewardserve.engine.batch import PackedBatch

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

    @property
    def pos_start(self) -> int:
        return _up(self.tok_cap)

    @property
    def cu_start(self) -> int:
        return self.pos_start + _up(self.tok_cap)

    @property
    def gather_start(self) -> int:
        return self.cu_start + _up(self.seq_cap + 1)

    @property
    def total(self) -> int:
        return self.gather_start + self.num_rows

    def views(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """row [>= total] → input_ids [tok_cap], positions [tok_cap], cu_seqlens [seq_cap + 1] (int64),
        gather [num_rows]."""
        return (row[:self.tok_cap], row[self.pos_start:self.pos_start + self.tok_cap],
                row[self.cu_start:self.cu_start + self.seq_cap + 1],
                row[self.gather_start:self.gather_start + self.num_rows])


def fill(row: np.ndarray, p: PackedBatch, layout: Layout) -> None:
    """Write a batch into ``row`` (int64 numpy view of the staging buffer) following ``layout``."""
    items = p.items
    t, cap = p.num_tokens, layout.tok_cap
    starts = np.zeros(p.num_seqs, dtype=np.int64)
    np.cumsum(p.lengths[:-1], out=starts[1:])
    ids = row[:cap]
    ids[:t] = np.fromiter(chain.from_iterable(it.token_ids for it in items), dtype=np.int64, count=t)
    ids[t:] = 0
    pos = row[layout.pos_start:layout.pos_start + cap]
    pos[:t] = np.arange(t, dtype=np.int64) - np.repeat(starts, p.lengths)
    pos[t:] = 0  # the dummy padding sequence
    if any(getattr(it, "token_type_ids", None) for it in items):
        segments = chain.from_iterable(it.token_type_ids or [0] * len(it.token_ids) for it in items)
        pos[:t] |= np.fromiter(segments, dtype=np.int64, count=t) << SEGMENT_SHIFT
    cu = row[layout.cu_start:layout.cu_start + layout.seq_cap + 1]
    cu[0] = 0
    np.cumsum(p.lengths, out=cu[1:p.num_seqs + 1])
    cu[p.num_seqs + 1:] = cap  # padding sequence, then zero-length sequences
    rows = np.fromiter(chain.from_iterable(it.positions for it in items), dtype=np.int64, count=p.num_rows)
    rows += np.repeat(starts, p.row_counts)
    row[layout.gather_start:layout.gather_start + p.num_rows] = rows


def split_segments(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed positions [T] (int64) → (positions [T], segment ids [T]); see ``SEGMENT_SHIFT``."""
    return positions & ((1 << SEGMENT_SHIFT) - 1), positions >> SEGMENT_SHIFT
