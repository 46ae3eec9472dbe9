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
    """``model.forward_hidden`` compiled with dynamic shapes (the compile runs on first call).

    Prefix reuse: the prefix region enters the compiled graph flat, [2 S] ([4 S] with the cache;
    ``VarlenMeta`` takes either, its readers view it by the sequence count). As [2, S], its S
    would be an input dimension of its own, which dynamo specialises at 0/1: a batch of one
    sequence (the warm-up's long one, a lone request run outside the CUDA graphs) failed the
    graph's ``S >= 2`` guard and compiled a second graph, doubling warm-up. 2 S is never 1, so
    one graph serves every batch, as without reuse (whose [T] and [S + 1] inputs are never 1)."""
    log.info("torch.compile of the packed backbone (dynamic shapes)")

    def packed(input_ids, positions, cu_seqlens, max_seqlen, prefix=None, cache=None):
        return model.forward_hidden(input_ids, positions, VarlenMeta(cu_seqlens, max_seqlen, prefix, cache))  # [T, H]
    compiled = torch.compile(packed, dynamic=True)

    def forward(input_ids, positions, cu_seqlens, max_seqlen, prefix=None, cache=None):
        if prefix is None:  # no prefix reuse: the compiled call as before
            return compiled(input_ids, positions, cu_seqlens, max_seqlen)
        return compiled(input_ids, positions, cu_seqlens, max_seqlen, prefix.reshape(-1), cache)  # a view
    return forward


def num_compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a growing number means recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))
