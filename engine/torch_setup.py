"""Process-wide torch settings, applied once by each entry point (``rewardserve serve``,
``rewardserve encode``, ``Engine.from_model``, the benchmarks).

torch.compile's settings (inductor's on-disk caches, dynamo's recompile limit, no duck shaping)
belong to the process, not to one model, so they are set here rather than where a model is
compiled. The environment is read by the entry point (``cache_dir_from``) and the folder passed
down. Importing this module does not import torch (``--help`` stays fast).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def cache_dir_from(environ: Mapping[str, str]) -> Path:
    """Where compiled kernels are cached: ``TORCHINDUCTOR_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/rewardserve/inductor`` (``~/.cache`` when XDG_CACHE_HOME is unset)."""
    if environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(environ["TORCHINDUCTOR_CACHE_DIR"])
    root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "rewardserve" / "inductor"


def configure(cache_dir: Path | None) -> None:
    """Apply the torch.compile settings for this process; idempotent.

    ``cache_dir``: inductor's FX-graph / autograd / autotune cache folder (created here), so a
    restart skips code generation; None leaves torch's own default folder.
    """
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Inductor reads its cache folder from this variable only (no config attribute): this
        # entry-point setup is the one place that writes it.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as fx_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    for name in ("recompile_limit", "cache_size_limit"):  # one entry per model in a process
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    # Duck shaping would tie sizes that happen to be equal in the first batch (e.g. T and the
    # staging row's offsets, or T and max_seqlen) and recompile when they differ later.
    if hasattr(fx_config, "use_duck_shape"):
        fx_config.use_duck_shape = False
