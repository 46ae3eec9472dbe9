"""Pick the adapter for a checkpoint from its ``config.json`` architectures.

Each adapter module exposes ``load(spec: LoadSpec) -> PoolingModel``. Modules are imported
lazily so a checkpoint only pays for the code it uses.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardserve.engine.config import ModelConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import PoolingModel

# Architectures with their own adapter; anything else is matched by suffix below.
_EXACT = {
    "Qwen2ForRewardModel": "qwen2_rm",
    "Qwen2ForProcessRewardModel": "qwen2_rm",
    "InternLM2ForRewardModel": "internlm2",
}
# Encoders (bidirectional, BERT family): their *Model and *ForSequenceClassification.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "modernbert"}
# Layers that cannot take packed sequences: run padded.
PADDED_TYPES = {"jamba", "mamba", "mamba2", "falcon_mamba", "zamba", "zamba2", "bamba"}


@dataclass(frozen=True)
class LoadSpec:
    """Everything an adapter needs to build its ``PoolingModel`` (on the CPU, in ``dtype``)."""

    folder: Path
    hf_config: Any                 # transformers PretrainedConfig
    model_config: ModelConfig
    dtype: torch.dtype
    tokenizer: Any                 # transformers fast tokenizer (may be None for token-only use)
    pooler_overrides: dict[str, Any] = field(default_factory=dict)
    shard: Any = None              # sharded.Shard: this rank's part under tensor parallelism (None: all of it)

    @property
    def head_rank(self) -> bool:
        """Whether this process builds the score head: always, but rank 0 only under tensor
        parallelism (it pools and scores; the other ranks run the backbone)."""
        return self.shard is None or self.shard.rank == 0

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or [""]
        return archs[0]


def adapter_name(spec: LoadSpec) -> str:
    """The adapter module for this checkpoint, or an error naming the architecture."""
    arch = spec.architecture
    model_type = getattr(spec.hf_config, "model_type", "")
    if arch in _EXACT:
        return _EXACT[arch]
    if model_type in PADDED_TYPES:
        return "padded"
    if model_type in ENCODER_TYPES or (spec.folder / "modules.json").exists():
        return "encoders"
    if arch.endswith("ForSequenceClassification"):
        return "seq_cls"
    if arch.endswith("ForCausalLM") or spec.model_config.convert in ("classify", "embed"):
        return "causal_lm"
    raise EngineError(f"architecture {arch or '<none>'} (model_type {model_type!r}) is not supported; "
                      "try --convert classify or --convert embed for a decoder LM")


def load_model(spec: LoadSpec) -> PoolingModel:
    """Build the adapter's model on the CPU; the runner moves it to the device."""
    name = adapter_name(spec)
    if spec.shard is not None:
        from rewardserve.engine.models.sharded import check_supported

        check_supported(name, spec.hf_config, spec.shard.world)
    module = importlib.import_module(f"rewardserve.engine.models.{name}")
    model = module.load(spec)
    return model.eval()
