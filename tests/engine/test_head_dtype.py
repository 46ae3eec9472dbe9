"""--head-dtype: the score head in float32 (default) or in the model's dtype."""
from __future__ import annotations

import torch

from rewardserve.engine.cli import build_parser
from rewardserve.engine.cli_args import config_from_args
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.types import PoolingParams


def logits_with(model_dir, *flags: str) -> torch.Tensor:
    args = build_parser().parse_args(["--model", str(model_dir), "--device", "cpu", "--dtype", "bfloat16", *flags])
    engine = Engine(config_from_args(EngineConfig, args))
    seqs = [[5 + i, 9, 17 + i, 3] * (i + 1) for i in range(8)]
    return torch.stack([r.data for r in engine.encode(seqs, task="classify", params=PoolingParams(use_activation=False))])


def test_head_dtype_model_rounds_scores_to_the_model_dtype_and_float32_does_not(demo_model_dir):
    bf16_head = logits_with(demo_model_dir, "--head-dtype", "model")
    fp32_head = logits_with(demo_model_dir)  # the default: float32
    assert torch.equal(bf16_head, bf16_head.bfloat16().float())  # every score is a bf16 number
    assert not torch.equal(fp32_head, fp32_head.bfloat16().float())
    assert torch.allclose(bf16_head, fp32_head, atol=0.05, rtol=0.02)
