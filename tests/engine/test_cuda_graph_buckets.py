"""CudaGraphs.bucket_for and the bucket lists from the config (no CUDA needed: keys only)."""
from __future__ import annotations

import torch

from rewardserve.engine.cuda_graphs import CudaGraphs, seq_buckets, token_buckets


def graphs(tokens=(16, 32, 64), seqs=(1, 4)) -> CudaGraphs:
    g = CudaGraphs(forward=None, device=torch.device("cpu"), buckets=tokens, seq_buckets=seqs)
    g.graphs = {key: None for key in g.keys}  # as if every key had been captured
    return g


def test_the_smallest_captured_graph_that_holds_the_batch():
    g = graphs()
    assert g.bucket_for(16, 1) == (16, 1)
    assert g.bucket_for(1, 1) == (16, 1)
    assert g.bucket_for(17, 1) == (32, 1)
    assert g.bucket_for(20, 2) == (32, 4)
    assert g.bucket_for(64, 4) == (64, 4)


def test_too_many_tokens_or_sequences_or_an_uncaptured_key_run_eagerly():
    g = graphs()
    assert g.bucket_for(65, 1) is None
    assert g.bucket_for(10, 5) is None
    del g.graphs[(32, 4)]  # its capture failed
    assert g.bucket_for(20, 2) is None


def test_bucket_lists_follow_the_config_limits():
    assert token_buckets(2048) == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert token_buckets(100) == (16, 32, 64) and token_buckets(1) == (16,)
    assert seq_buckets(64) == (1, 4, 16, 64) and seq_buckets(3) == (1,)
