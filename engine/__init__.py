"""rewardserve.engine: load reward and pooling models, score packed batches.

The public names are imported lazily (``from rewardserve.engine import Engine``) so that light
modules such as the CLI's option parsing do not pay for importing torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "rewardserve.engine.engine",
    "AsyncEngine": "rewardserve.engine.async_engine",
    "EngineAPI": "rewardserve.engine.api",
    "EngineConfig": "rewardserve.engine.config",
    "ModelConfig": "rewardserve.engine.config",
    "RunnerConfig": "rewardserve.engine.config",
    "SchedulerConfig": "rewardserve.engine.config",
    "PoolingTask": "rewardserve.engine.types",
    "PoolingType": "rewardserve.engine.types",
    "PoolingParams": "rewardserve.engine.types",
    "TextInput": "rewardserve.engine.types",
    "TokensInput": "rewardserve.engine.types",
    "ChatInput": "rewardserve.engine.types",
    "EncodeResult": "rewardserve.engine.types",
    "ModelInfo": "rewardserve.engine.types",
    "RewardResult": "rewardserve.engine.reward",
    "ScoreParams": "rewardserve.engine.score",
    "ScoreResult": "rewardserve.engine.score",
    "ScoreOutput": "rewardserve.engine.score",
    "EngineError": "rewardserve.engine.errors",
    "InvalidInputError": "rewardserve.engine.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rewardserve.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
