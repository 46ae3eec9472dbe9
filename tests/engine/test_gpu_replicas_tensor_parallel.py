"""Data parallel over tensor-parallel groups on four GPUs: ``--data-parallel-size 2
--tensor-parallel-size 2`` (replica 0: this process on cuda:0 with its rank on cuda:1; replica 1:
a leader process on cuda:2 with its rank on cuda:3), NCCL, torch.compile and CUDA graphs on,
against one GPU. Skips below four GPUs. Run: ``pytest -m gpu
tests/engine/test_gpu_replicas_tensor_parallel.py -s`` (about 4-6 minutes: three compiles and
graph captures, two of them at once).

A tiny Llama seq-cls in bf16 (head_dim 64: the Triton kernel's path; GQA); one request per
sequence and one sequence per batch, so both replicas compute (short ones replay CUDA graphs)."""
from __future__ import annotations

import asyncio

import pytest
import torch

from gpu_testlib import llama_on_one_gpu
from rewardserve.engine.async_engine import AsyncEngine
from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig, SchedulerConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs four CUDA devices")]
LENGTHS = (1, 5, 17, 64, 300, 700) * 4
BF16_TOLERANCE = 3e-2  # bf16 partial sums add in another order than one GEMM's


async def test_two_groups_of_two_gpus_equal_one(tmp_path):
    folder = tmp_path / "llama"
    seqs, want = llama_on_one_gpu(folder, LENGTHS)
    cfg = EngineConfig(model=ModelConfig(model=str(folder), dtype="bfloat16"), runner=RunnerConfig(device="cuda"),
                       scheduler=SchedulerConfig(max_num_seqs=1),
                       parallel=ParallelConfig(data_parallel_size=2, tensor_parallel_size=2))
    engine = await asyncio.to_thread(AsyncEngine.from_config, cfg)
    try:
        await engine.start()
        got = await asyncio.wait_for(asyncio.gather(*(engine.encode([s], task="classify") for s in seqs)), 300)
        remote = engine.core.runners[1]
        print("replica 0:", engine.core.runner.stats, "\nreplica 1:", remote.stats, "batches:", remote.num_batches)
        assert str(remote.device) == "cuda:2" and remote.num_batches > 0
        assert remote.stats["compile"] is True and remote.stats["cuda_graphs"] is True
        assert engine.stats().replicas_alive == 2
    finally:
        await engine.shutdown(10)
    for g, w in zip(got, want):
        assert (g[0].data - w).abs().max().item() <= BF16_TOLERANCE
