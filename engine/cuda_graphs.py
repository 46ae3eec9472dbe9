"""CUDA-graph replay of the packed forward for small token buckets (the latency path).

One graph per bucket of ``tok_cap`` tokens, each reading a static int64 staging row laid out by
``staging.Layout(tok_cap, seq_cap)``: a batch of T <= tok_cap tokens in n <= max_seqs sequences
is padded with one dummy sequence (tokens T..tok_cap) and zero-length sequences, and attention
runs with ``max_seqlen = tok_cap``. Varlen attention keeps every real sequence apart from the
padding, so the real rows equal an unpadded forward. Graphs are captured largest first into one
shared memory pool; a replay's output is valid until the next replay.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from rewardserve.engine.staging import Layout

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_MAX_SEQS = 64  # a GRPO group or a PPO mini-batch of short samples
# (input_ids [T], positions [T], cu_seqlens int32 [S + 1], max_seqlen) → hidden [T, H]
PackedForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class CudaGraphs:
    """Captured forwards keyed by token bucket, sharing one static staging row on the device."""

    def __init__(self, forward: PackedForward, device: torch.device,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS, max_seqs: int = DEFAULT_MAX_SEQS):
        self.forward = forward
        self.device = device
        self.buckets = tuple(sorted(buckets))
        self.seq_cap = max_seqs + 1  # + the dummy padding sequence
        self.max_seqs = max_seqs
        biggest = self.layout(self.buckets[-1], self.buckets[-1])
        self.static = torch.zeros(biggest.total, dtype=torch.int64, device=device)  # [L]
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def layout(self, bucket: int, num_rows: int) -> Layout:
        return Layout(bucket, self.seq_cap, num_rows)

    def bucket_for(self, num_tokens: int, num_seqs: int) -> int | None:
        """The smallest captured bucket that holds the batch, or None (run it eagerly)."""
        if num_seqs > self.max_seqs:
            return None
        return next((b for b in self.buckets if b >= num_tokens and b in self.graphs), None)

    def capture(self) -> float:
        """Capture every bucket (largest first, one pool); returns seconds."""
        start = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):
            self._dummy_batch(bucket)
            step = self._step(bucket)
            for _ in range(2):  # warm-up outside capture: autotuning, cuBLAS workspaces, lazy init
                step()
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = step()  # [bucket, H]
            self.graphs[bucket] = (graph, out)
        torch.cuda.synchronize(self.device)
        seconds = time.monotonic() - start
        log.info("captured CUDA graphs for %s-token buckets in %.1fs", list(self.buckets), seconds)
        return seconds

    def _step(self, bucket: int) -> Callable[[], torch.Tensor]:
        ids, pos, cu64, _ = self.layout(bucket, 0).views(self.static)

        def step() -> torch.Tensor:
            return self.forward(ids, pos, cu64.to(torch.int32), bucket)  # [bucket, H]
        return step

    def _dummy_batch(self, bucket: int) -> None:
        """One sequence filling the bucket, so warm-up and capture see a valid batch."""
        ids, pos, cu64, _ = self.layout(bucket, 0).views(self.static)
        ids.zero_()
        pos.copy_(torch.arange(bucket, device=self.device))
        cu64.fill_(bucket)
        cu64[0] = 0

    def replay(self, host_row: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a staging row (pinned, laid out for ``bucket``) in and replay.

        Returns hidden [bucket, H] (graph-owned memory) and the device row [L] for gather indices.
        """
        row = self.static[:host_row.shape[0]]
        row.copy_(host_row, non_blocking=True)
        graph, out = self.graphs[bucket]
        graph.replay()
        return out, row
