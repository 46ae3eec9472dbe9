"""PackedBatch: the one contract between the scheduler and the runner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from rewardserve.engine.prefix import PrefixPlan, PrefixPlanner
    from rewardserve.engine.prepare import WorkItem


@dataclass(frozen=True)
class PackedBatch:
    """The sequences of one packed forward pass, in packing order, and their sizes.

    The scheduler cuts it (token budget, sequence cap, priorities, deadlines); the runner lays
    it out in one staging row (``staging.fill``: ids and positions [T], cu_seqlens [n + 1],
    gather rows [R]), runs it, and returns one (data, logits) per item in this order.

    items: WorkItems (``token_ids``, pooled ``positions``, resolved ``pooling``)
    lengths: [S] int64 tokens per packed segment: one per item, unless ``prefix`` shares prompts
    row_counts: pooled positions per item
    num_tokens: T = sum(lengths), the tokens computed; max_seqlen: max(lengths)
    prefix: the shared-prefix segments (``engine/prefix.py``), None when nothing is shared
    planner: what planned ``prefix`` (kept so that ``split`` plans its halves the same way)
    """

    items: Sequence["WorkItem"]
    lengths: np.ndarray
    row_counts: list[int]
    num_tokens: int
    max_seqlen: int
    prefix: "PrefixPlan | None" = None
    planner: "PrefixPlanner | None" = None

    @classmethod
    def of(cls, items: Sequence["WorkItem"], planner: "PrefixPlanner | None" = None) -> "PackedBatch":
        """The batch of ``items`` (anything with ``token_ids`` and ``positions``), sizes counted once.

        With a ``planner``, items sharing a prefix compute it once, and each item's
        ``reused_tokens`` says how many of its tokens it did not compute."""
        plan = planner.plan(items) if planner is not None else None
        if plan is None:
            lengths = np.fromiter((len(it.token_ids) for it in items), dtype=np.int64, count=len(items))
        else:
            lengths = plan.lengths
        if planner is not None:
            reused = plan.reused.tolist() if plan is not None else [0] * len(items)
            for item, n in zip(items, reused):
                item.reused_tokens = n
        counts = [len(it.positions) for it in items]
        return cls(items, lengths, counts, int(lengths.sum()), int(lengths.max(initial=0)), plan, planner)

    @property
    def num_seqs(self) -> int:
        """Packed segments (sequences of the attention kernel): items, plus shared prefixes."""
        return int(self.lengths.shape[0])

    @property
    def num_item_tokens(self) -> int:
        """Tokens of the items themselves (every token of every sequence, shared or not)."""
        return sum(len(it.token_ids) for it in self.items)

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
        return PackedBatch.of(self.items[:half], self.planner), PackedBatch.of(self.items[half:], self.planner)
