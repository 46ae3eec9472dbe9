"""Varlen attention kernels alone: torch's bundled FlashAttention-2 vs our Triton kernel (tile choices).

    python benchmarks/bench_attention.py --out attention.json

Shapes of the benchmark models (Qwen3-0.6B: 16 query / 8 kv heads; Llama-3.1-8B: 32 / 8; head_dim
128), causal, bf16. Batches: the lognormal workload packed into 16,384-token batches (what offline
throughput runs), and one sequence of 128 / 512 / 2048 tokens laid out as a CUDA-graph bucket
replays it (real sequence + padding sequence, max_seqlen = bucket). Each measurement replays a
CUDA graph of ``--calls`` kernel calls, so launch overhead is not counted. Prints a table; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_workloads  # noqa: E402
from rewardserve.engine import attention, triton_attention  # noqa: E402

HEADS = {"qwen3-0.6b": (16, 8), "llama-3.1-8b": (32, 8)}
TILES = {  # name → Triton launch config
    "m64n64w4": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m128n64w8": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "m128n128w8": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    "m128n64w4": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m64n128w4": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
}


def batches(budget: int = 16384, num_seqs: int = 1024) -> dict[str, list[int]]:
    """name → sequence lengths of one batch (the last entry of a bucket layout is its padding)."""
    lengths = bench_workloads.lognormal_lengths(num_seqs)
    packed, current = [], []
    for n in lengths:
        if current and sum(current) + n > budget:
            packed.append(current)
            current = []
        current.append(n)
    out = {f"lognormal_{i}": b for i, b in enumerate(packed[:3])}
    for bucket, real in ((128, 128), (512, 512), (512, 500), (2048, 2048)):
        out[f"single_{real}_in_{bucket}"] = [real, bucket - real]
    return out


def make_inputs(lengths: list[int], heads: int, kv_heads: int, head_dim: int = 128):
    total = sum(lengths)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(total, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)        # [T, H, D]
    k, v = (torch.randn(total, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))                                                                          # [T, Hkv, D]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return q, k, v, attention.VarlenMeta(cu, max(lengths))


def attention_flops(lengths: list[int], heads: int, head_dim: int = 128) -> float:
    """Matmul FLOPs of one causal call (QK^T and PV over the lower triangle)."""
    return 4.0 * sum(n * n for n in lengths) * heads * head_dim * 0.5


def time_graph(fn, calls: int) -> float:
    """Microseconds per call: ``calls`` calls captured in one CUDA graph, best of 5 replays."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def bench_case(name: str, lengths: list[int], heads: int, kv_heads: int, calls: int) -> dict:
    q, k, v, meta = make_inputs(lengths, heads, kv_heads)
    scale = 128 ** -0.5
    real = lengths[:-1] if name.startswith("single") else lengths  # a bucket's padding is not work
    flops = attention_flops(real, heads)
    ref = attention._torch_flash(q, k, v, meta, True, scale, None)
    row = {"lengths": len(lengths), "tokens": sum(lengths), "max_seqlen": meta.max_seqlen}
    runs = {"torch_fa2": lambda: attention._torch_flash(q, k, v, meta, True, scale, None)}
    runs["triton_default"] = lambda: triton_attention.launch(q, k, v, meta.cu_seqlens, meta.max_seqlen,
                                                          is_causal=True, scale=scale)
    for name, tiles in TILES.items():
        runs[f"triton_{name}"] = (lambda t=tiles: triton_attention.launch(q, k, v, meta.cu_seqlens, meta.max_seqlen,
                                                                          is_causal=True, scale=scale, tiles=t))
    for name, fn in runs.items():
        try:
            err = (fn().float() - ref.float()).abs().max().item()
            us = time_graph(fn, calls)
            row[name] = {"us": round(us, 2), "tflops": round(flops / us / 1e6, 1), "max_abs_vs_fa2": err}
        except Exception as exc:  # noqa: BLE001 - a tile that does not fit must not end the run
            row[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(HEADS))
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default="bench_attention.json")
    args = p.parse_args(argv)
    attention.probe_torch_flash(torch.device("cuda"))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for model in args.models.split(","):
        heads, kv_heads = HEADS[model]
        for name, lengths in batches().items():
            row = bench_case(name, lengths, heads, kv_heads, args.calls)
            result["cases"][f"{model}/{name}"] = row
            Path(args.out).write_text(json.dumps(result, indent=1))
            cells = "  ".join(f"{k}={v['us']}us/{v['tflops']}TF" for k, v in row.items()
                              if isinstance(v, dict) and "us" in v)
            print(f"{model}/{name} T={row['tokens']}: {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
