"""Session fixtures shared by every test package."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """The built-in demo reward model (tiny Qwen3 seq-cls, real BPE tokenizer, ChatML template)."""
    from rewardserve.engine.demo import ensure_demo_model

    return ensure_demo_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def demo_engine(demo_model_dir):
    """One offline Engine on the demo model, in float32 on the CPU."""
    from rewardserve.engine.engine import Engine

    return Engine.from_model(str(demo_model_dir), device="cpu", dtype="float32")
