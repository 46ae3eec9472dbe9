"""Reading checkpoints in the Hugging Face on-disk layout without running remote code.

``model.safetensors`` (one file) or ``model.safetensors.index.json`` + shards; ``config.json``
through transformers' ``AutoConfig`` when it knows the model_type, else as a plain
``PretrainedConfig`` (InternLM2 and other remote-code configs: attributes stay readable).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rewardserve.engine.errors import EngineError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_hf_config(folder: str | Path) -> Any:
    """``config.json`` as a transformers config; never executes a checkpoint's own Python code.

    AutoConfig parses known model types (``auto_map`` is ignored); unknown ones such as
    ``internlm2`` come back as ``PretrainedConfig.from_dict`` with every field as an attribute.
    """
    from transformers import AutoConfig, PretrainedConfig

    path = Path(folder) / "config.json"
    if not path.exists():
        raise EngineError(f"{folder}: no config.json")
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, KeyError):
        # Unknown model_type (would need trust_remote_code): keep the raw fields.
        return PretrainedConfig.from_dict(json.loads(path.read_text()))


def shard_files(folder: str | Path) -> dict[str, Path]:
    """Tensor name → the safetensors file that holds it (one file, or the sharded index)."""
    folder = Path(folder)
    if (folder / SINGLE).exists():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE), framework="pt") as f:
            return {name: folder / SINGLE for name in f.keys()}
    if (folder / INDEX).exists():
        weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        return {name: folder / shard for name, shard in weight_map.items()}
    raise EngineError(f"{folder}: no {SINGLE} or {INDEX} (only safetensors checkpoints are supported)")


def load_state_dict(folder: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (or those whose name passes ``keep``), on the CPU."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name, file in shard_files(folder).items():
        if keep is None or keep(name):
            by_file.setdefault(file, []).append(name)
    state: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        if not file.exists():
            raise EngineError(f"{folder}: shard {file.name} named in {INDEX} is missing")
        with safe_open(str(file), framework="pt") as f:
            state.update({name: f.get_tensor(name) for name in names})
    return state


def read_tensor(folder: str | Path, name: str) -> torch.Tensor | None:
    """One named tensor of the checkpoint, or None when it has none by that name."""
    found = load_state_dict(folder, keep=lambda n: n == name)
    return found.get(name)


def build_with_weights(cls: type[nn.Module], config: Any, state: dict[str, torch.Tensor],
                       dtype: torch.dtype) -> nn.Module:
    """Instantiate ``cls(config)`` on the meta device and assign ``state`` (cast to ``dtype``).

    No random init and no second copy of the weights (a 72B backbone would not fit twice).
    Non-persistent buffers (rotary ``inv_freq``) are not in checkpoints, so every module that
    owns one is rebuilt on the CPU in float32, as transformers' own loading keeps them.
    """
    with torch.device("meta"):
        model = cls(config)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return rebuild_buffers(model, config)


def rebuild_buffers(model: nn.Module, config: Any) -> nn.Module:
    """Rebuild, on the CPU, every module of ``model`` that still has a meta buffer (rotary
    ``inv_freq``: not in checkpoints); then any parameter or buffer left on meta is an error."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            _replace(model, name, type(module)(config=config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise EngineError(f"{type(model).__name__}: no weights for {', '.join(left[:5])}")
    return model


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
