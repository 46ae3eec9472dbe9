"""torch.compile of the packed backbone: dynamic shapes, compile cache on disk.

One compiled graph serves every batch: the token count, the number of sequences and
``max_seqlen`` are symbolic (``dynamic=True``), so a new batch shape does not recompile.
The process-wide compile settings (on-disk caches, recompile limit, no duck shaping) are applied
once by the entry point (``torch_setup.configure``), not here.
"""
from __future__ import annotations

import logging

import torch

from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.cuda_graphs import PackedForward

log = logging.getLogger(__name__)


def eager_forward(model) -> PackedForward:
    """The model's own packed forward (looked up at call time, so wrappers still apply).

    ``prefix`` (prefix reuse): [2, S] int64, see ``VarlenMeta``; omitted or None without it.
    ``cache`` (prefix cache): ``prefix_cache.CacheTensors``."""
    def forward(input_ids, positions, cu_seqlens, max_seqlen, prefix=None, cache=None):
        return model.forward_hidden(input_ids, positions, VarlenMeta(cu_seqlens, max_seqlen, prefix, cache))  # [T, H]
    return forward


def compile_forward(model) -> PackedForward:
    """``model.forward_hidden`` compiled with dynamic shapes (the compile runs on first call)."""
    log.info("torch.compile of the packed backbone (dynamic shapes)")

    def packed(input_ids, positions, cu_seqlens, max_seqlen, prefix=None, cache=None):
        return model.forward_hidden(input_ids, positions, VarlenMeta(cu_seqlens, max_seqlen, prefix, cache))  # [T, H]
    return torch.compile(packed, dynamic=True)


def num_compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a growing number means recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))
