"""Tensor parallel on two GPUs over NCCL, with torch.compile and CUDA graphs on (their defaults on
CUDA), against one GPU: the multi-GPU run (NCCL cannot run two ranks on one GPU, so this skips
on a one-GPU machine). Run: ``pytest -m gpu tests/engine/test_gpu_tensor_parallel.py -s``
(about 3-5 minutes: two compiles and graph captures).

A tiny Llama seq-cls in bf16 with head_dim 64 (the Triton kernel's path) and GQA; a batch of
mixed lengths (eager / compiled path) and one short sequence (a CUDA-graph bucket)."""
from __future__ import annotations

import pytest
import torch

from gpu_testlib import llama_on_one_gpu
from rewardserve.engine.engine import Engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]
LENGTHS = (1, 5, 17, 64, 300, 700)
BF16_TOLERANCE = 3e-2  # bf16 partial sums add in another order than one GEMM's


def test_two_gpus_equal_one(tmp_path):
    folder = tmp_path / "llama"
    seqs, want = llama_on_one_gpu(folder, LENGTHS)
    with Engine.from_model(str(folder), device="cuda", dtype="bfloat16", tensor_parallel_size=2) as two:
        got = [r.data for r in two.encode(seqs, task="classify")]
        alone = two.encode([seqs[1]], task="classify")[0].data   # a CUDA-graph bucket
        print("tensor-parallel runner:", two.core.runner.stats)
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= BF16_TOLERANCE
    assert (alone - want[1]).abs().max().item() <= BF16_TOLERANCE
