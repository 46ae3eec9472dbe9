"""PackedBatch: the one contract between the scheduler and the runner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from rewardserve.engine.prepare import WorkItem


@dataclass(frozen=True)
class PackedBatch:
    """The sequences of one packed forward pass, in packing order, and their sizes.

    The scheduler cuts it (token budget, sequence cap, priorities, deadlines); the runner lays
    it out in one staging row (``staging.fill``: ids and positions [T], cu_seqlens [n + 1],
    gather rows [R]), runs it, and returns one (data, logits) per item in this order.

    items: WorkItems (``token_ids``, pooled ``positions``, resolved ``pooling``)
    lengths: [n] int64 tokens per item; row_counts: pooled positions per item
    num_tokens: T = sum(lengths); max_seqlen: max(lengths)
    """

    items: Sequence["WorkItem"]
    lengths: np.ndarray
    row_counts: list[int]
    num_tokens: int
    max_seqlen: int

    @classmethod
    def of(cls, items: Sequence["WorkItem"]) -> "PackedBatch":
        """The batch of ``items`` (anything with ``token_ids`` and ``positions``), sizes counted once."""
        lengths = np.fromiter((len(it.token_ids) for it in items), dtype=np.int64, count=len(items))
        counts = [len(it.positions) for it in items]
        return cls(items, lengths, counts, int(lengths.sum()), int(lengths.max(initial=0)))

    @property
    def num_seqs(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_rows(self) -> int:
        """Pooled rows of the whole batch (the head's input rows, before MEAN averaging)."""
        return sum(self.row_counts)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator["WorkItem"]:
        return iter(self.items)

    def split(self) -> tuple["PackedBatch", "PackedBatch"]:
        """Two halves (failure isolation runs each on its own)."""
        half = len(self.items) // 2
        return PackedBatch.of(self.items[:half]), PackedBatch.of(self.items[half:])
