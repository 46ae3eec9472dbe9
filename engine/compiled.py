"""torch.compile of the packed backbone: dynamic shapes, compile cache on disk.

One compiled graph serves every batch: the token count, the number of sequences and
``max_seqlen`` are symbolic (``dynamic=True``), so a new batch shape does not recompile.
Inductor's FX-graph and autograd caches live in ``TORCHINDUCTOR_CACHE_DIR`` (default
``$XDG_CACHE_HOME/rewardserve/inductor``), so a restart skips code generation.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from rewardserve.engine.attention import VarlenMeta
from rewardserve.engine.cuda_graphs import PackedForward

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where compiled kernels are cached (set TORCHINDUCTOR_CACHE_DIR to move it)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rewardserve" / "inductor"


def configure_cache() -> Path:
    """Point inductor at the on-disk cache and turn its caches on; returns the folder."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    return folder


def eager_forward(model) -> PackedForward:
    """The model's own packed forward (looked up at call time, so wrappers still apply)."""
    def forward(input_ids, positions, cu_seqlens, max_seqlen):
        return model.forward_hidden(input_ids, positions, VarlenMeta(cu_seqlens, max_seqlen))  # [T, H]
    return forward


def compile_forward(model) -> PackedForward:
    """``model.forward_hidden`` compiled with dynamic shapes (the compile runs on first call)."""
    folder = configure_cache()
    log.info("torch.compile of the packed backbone (dynamic shapes; cache %s)", folder)
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # one entry per model in a process
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    import torch.fx.experimental._config as fx_config

    # Duck shaping would tie sizes that happen to be equal in the first batch (e.g. T and the
    # staging row's offsets, or T and max_seqlen) and recompile when they differ later.
    if hasattr(fx_config, "use_duck_shape"):
        fx_config.use_duck_shape = False

    def packed(input_ids, positions, cu_seqlens, max_seqlen):
        return model.forward_hidden(input_ids, positions, VarlenMeta(cu_seqlens, max_seqlen))  # [T, H]
    return torch.compile(packed, dynamic=True)


def num_compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a growing number means recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))
