"""Helpers shared by the engine tests (a module on tests/'s path, imported as ``engine_testlib``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardserve.engine.attention import VarlenMeta


@dataclass
class ReferencePacking:
    """Sequences concatenated with no padding, built the obvious way: the reference the engine's
    staging row is checked against, and the input of model-level forward tests.

    input_ids, positions: [T] int64 (positions restart at 0 per sequence); cu_seqlens: [n + 1] int32.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def meta(self) -> VarlenMeta:
        return VarlenMeta(self.cu_seqlens, self.max_seqlen)


def pack_token_ids(sequences: list[list[int]]) -> ReferencePacking:
    """Concatenate token id lists into one ReferencePacking (on the CPU)."""
    lengths = [len(s) for s in sequences]
    input_ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]) if lengths else input_ids
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return ReferencePacking(input_ids, positions, cu_seqlens, max(lengths, default=0))
