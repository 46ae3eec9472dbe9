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


def test_an_out_of_memory_on_one_rank_in_a_compiled_forward_keeps_the_group(tmp_path):
    """Rank 1's compiled forward fails before its first all-reduce: it issues the ones it owes
    (counted by NCCL's sequence number), rank 0 splits the batch as on one GPU, and the group
    keeps serving (on CPU: test_tensor_parallel_failures.py, eager)."""
    from test_tensor_parallel_failures import FailForward

    folder = tmp_path / "llama"
    seqs, want = llama_on_one_gpu(folder, LENGTHS)
    with Engine.from_model(str(folder), device="cuda", dtype="bfloat16", tensor_parallel_size=2) as two:
        two.encode(seqs, task="classify")  # warm-up; a compiled row shows that the sequence number counts
        assert two.core.runner.stats["compile"] is True
        two.core.tensor_parallel.wrap_forward(1, FailForward("oom", "CUDA out of memory (injected)", 1, "before"))
        got = [r.data for r in two.encode(seqs, task="classify")]
        assert two.loop.num_oom_splits == 1 and two.core.tensor_parallel.lost is None
        again = [r.data for r in two.encode(seqs, task="classify")]
    for g, a, w in zip(got, again, want):
        assert (g - w).abs().max().item() <= BF16_TOLERANCE
        assert (a - w).abs().max().item() <= BF16_TOLERANCE
