"""PackedBatch: the only contract between the scheduler and the runner."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rewardserve.engine.attention import VarlenMeta


@dataclass
class PackedBatch:
    """Sequences concatenated with no padding.

    input_ids, positions: [total_tokens] int64 (positions restart at 0 for each sequence)
    cu_seqlens: [num_seqs + 1] int32, sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]
    items: the scheduler's work items, one per sequence, in packing order (the pooling plan).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    items: list = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.cu_seqlens.shape[0]) - 1

    def meta(self) -> VarlenMeta:
        return VarlenMeta(self.cu_seqlens, self.max_seqlen)

    def to(self, device: torch.device, non_blocking: bool = False) -> "PackedBatch":
        """Copy the index tensors to ``device`` (pinned host memory makes this asynchronous)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.positions), move(self.cu_seqlens),
                           self.max_seqlen, self.items)


def pack_token_ids(sequences: list[list[int]], items: list | None = None, pin: bool = False) -> PackedBatch:
    """Concatenate token id lists into one PackedBatch (on the CPU, optionally pinned)."""
    lengths = [len(s) for s in sequences]
    input_ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]) if lengths else input_ids
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    if pin and torch.cuda.is_available():
        input_ids, positions, cu_seqlens = input_ids.pin_memory(), positions.pin_memory(), cu_seqlens.pin_memory()
    return PackedBatch(input_ids, positions, cu_seqlens, max(lengths, default=0), items or [])
