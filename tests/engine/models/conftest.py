"""Fixtures for decoder adapter tests: one trained tokenizer per session, fresh checkpoint folders."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewardserve.engine.demo import build_tokenizer
from tiny_decoders import copy_tokenizer


@pytest.fixture(scope="session")
def tokenizer_src(tmp_path_factory) -> Path:
    """The demo byte-level BPE (vocab 400, ChatML specials incl. <extra_0>), trained once."""
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return folder


@pytest.fixture
def ckpt(tmp_path, tokenizer_src) -> Path:
    """An empty checkpoint folder that already holds the tokenizer files."""
    folder = tmp_path / "ckpt"
    copy_tokenizer(tokenizer_src, folder)
    return folder


@pytest.fixture(autouse=True)
def _cpu_sdpa_and_seed():
    """Deterministic weights for every test (models get a CPU SDPA attention context at build)."""
    torch.manual_seed(0)
    yield
