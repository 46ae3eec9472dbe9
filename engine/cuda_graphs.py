"""CUDA-graph replay of the packed forward for small token buckets (the latency path).

One graph per (token bucket, sequence bucket), each reading a static int64 staging row laid out
by ``staging.Layout(tok_cap, seq_cap)``: a batch of T <= tok_cap tokens in n <= num_seqs
sequences is padded with one dummy sequence (tokens T..tok_cap) and zero-length sequences, and
attention runs with ``max_seqlen = tok_cap``. Varlen attention keeps every real sequence apart
from the padding, so the real rows equal an unpadded forward. Graphs are captured largest first
into one shared memory pool; a replay's output is valid until the next replay.

Why sequence buckets: the varlen attention grid is (max_seqlen / 128, seq_cap, heads). A lone
512-token PPO call in a 65-slot graph launches 4160 CTAs of which 64 have work; the empty ones
cost about 30 us per layer on an H100. Capturing 2-, 5-, 17- and 65-slot graphs keeps the grid
close to the work.

Prefix reuse (``prefix=True``): every graph reads the staging row's prefix region too (zeros when
a batch shares nothing), so sharing needs no graphs of its own: a batch's buckets count its
packed segments and computed tokens. With the prefix cache (``cache_blocks`` > 0) the row's block
table (a fixed size) and slot mapping too, and the graphs write into and read from the pools
(static tensors: the runner's ``KVPool``).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from rewardserve.engine.staging import Layout

log = logging.getLogger(__name__)

# (input_ids [T], positions [T], cu_seqlens int32 [S + 1], max_seqlen[, prefix [2, S] int64]) → hidden [T, H]
PackedForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
GraphKey = tuple[int, int]  # (token bucket, sequence bucket)


def token_buckets(max_tokens: int) -> tuple[int, ...]:
    """Powers of two from 16 to ``max_tokens`` (16 at least): the graphs' token capacities."""
    out, b = [16], 32
    while b <= max_tokens:
        out.append(b)
        b *= 2
    return tuple(out)


def seq_buckets(max_seqs: int) -> tuple[int, ...]:
    """1 and the powers of 4 up to ``max_seqs``: one PPO sample ... a GRPO group or a mini-batch."""
    out, s = [1], 4
    while s <= max_seqs:
        out.append(s)
        s *= 4
    return tuple(out)


class CudaGraphs:
    """Captured forwards keyed by (token bucket, sequence bucket), sharing one static staging row."""

    def __init__(self, forward: PackedForward, device: torch.device, buckets: tuple[int, ...],
                 seq_buckets: tuple[int, ...], prefix: bool = False, cache_blocks: int = 0,
                 cache: Callable[[Layout, torch.Tensor], object] | None = None):
        self.forward = forward
        self.prefix = prefix  # graphs read the staging row's prefix region (prefix reuse on)
        self.cache_blocks = cache_blocks  # block-table entries (prefix cache; 0: none)
        self.cache = cache                # (layout, row) → the forward's CacheTensors
        self.device = device
        self.buckets = tuple(sorted(buckets))
        self.seq_buckets = tuple(sorted(seq_buckets))
        self.max_seqs = self.seq_buckets[-1]
        self.keys = [(t, s) for t in self.buckets for s in self.seq_buckets if s <= t]
        biggest = Layout(self.buckets[-1], self.max_seqs + 1, self.buckets[-1], prefix, cache_blocks)
        self.static = torch.zeros(biggest.total, dtype=torch.int64, device=device)  # [L]
        self.graphs: dict[GraphKey, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def layout(self, key: GraphKey, num_rows: int) -> Layout:
        """The staging layout of graph ``key``: its token bucket, its sequences + the dummy one."""
        return Layout(key[0], key[1] + 1, num_rows, self.prefix, self.cache_blocks)

    def bucket_for(self, num_tokens: int, num_seqs: int) -> GraphKey | None:
        """The smallest captured graph that holds the batch, or None (run it eagerly)."""
        tok = next((b for b in self.buckets if b >= num_tokens), None)
        seqs = next((s for s in self.seq_buckets if s >= num_seqs), None)
        key = (tok, seqs)
        return key if key in self.graphs else None

    def capture(self) -> float:
        """Capture every graph (largest first, one pool); returns seconds."""
        start = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        for key in sorted(self.keys, reverse=True):
            self._dummy_batch(key)
            step = self._step(key)
            for _ in range(2):  # warm-up outside capture: autotuning, cuBLAS workspaces, lazy init
                step()
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = step()  # [bucket, H]
            self.graphs[key] = (graph, out)
        torch.cuda.synchronize(self.device)
        seconds = time.monotonic() - start
        log.info("captured %d CUDA graphs (%s-token x %s-sequence buckets) in %.1fs", len(self.graphs),
                 list(self.buckets), list(self.seq_buckets), seconds)
        return seconds

    def _step(self, key: GraphKey) -> Callable[[], torch.Tensor]:
        layout = self.layout(key, 0)
        ids, pos, cu64, _ = layout.views(self.static)
        prefix = layout.prefix_view(self.static)  # [2 (4), seqs + 1] or None
        cache = self.cache(layout, self.static) if self.cache_blocks else None

        def step() -> torch.Tensor:
            if prefix is None:
                return self.forward(ids, pos, cu64.to(torch.int32), key[0])  # [bucket, H]
            if cache is None:
                return self.forward(ids, pos, cu64.to(torch.int32), key[0], prefix)
            return self.forward(ids, pos, cu64.to(torch.int32), key[0], prefix, cache)
        return step

    def _dummy_batch(self, key: GraphKey) -> None:
        """One sequence filling the bucket, so warm-up and capture see a valid batch. Positions
        are zero, as for the padding sequence at replay: the bucket may exceed the position table."""
        bucket = key[0]
        layout = self.layout(key, 0)
        ids, pos, cu64, _ = layout.views(self.static)
        ids.zero_()
        pos.zero_()
        cu64.fill_(bucket)
        cu64[0] = 0
        if layout.prefix:
            layout.prefix_view(self.static).zero_()
        if layout.cache_blocks:  # nothing read, nothing stored
            table, slots = layout.cache_views(self.static)
            table.zero_()
            slots.fill_(-1)

    def replay(self, host_row: torch.Tensor, key: GraphKey) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a staging row (pinned, laid out for ``key``) in and replay.

        Returns hidden [bucket, H] (graph-owned memory) and the device row [L] for gather indices.
        """
        row = self.static[:host_row.shape[0]]
        row.copy_(host_row, non_blocking=True)
        graph, out = self.graphs[key]
        graph.replay()
        return out, row
