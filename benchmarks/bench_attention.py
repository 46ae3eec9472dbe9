"""Varlen attention kernels alone: torch's bundled FlashAttention-2 vs our Triton kernel (tile choices).

    python benchmarks/bench_attention.py --out attention.json
    python benchmarks/bench_attention.py --models gemma2-2b,gemma2-9b --pick best256.json --out gemma.json

Shapes of the benchmark models (Qwen3-0.6B: 16 query / 8 kv heads; Llama-3.1-8B: 32 / 8; head_dim
128), causal, bf16. Batches: the lognormal workload packed into 16,384-token batches (what offline
throughput runs), and one sequence of 128 / 512 / 2048 tokens laid out as a CUDA-graph bucket
replays it (real sequence + padding sequence, max_seqlen = bucket). Each measurement replays a
CUDA graph of ``--calls`` kernel calls, so launch overhead is not counted. Prints a table; writes JSON.

Gemma2 shapes (2B: 8 / 4 heads, 9B: 16 / 8; head_dim 256, logits soft-capped at 50): torch's kernel
cannot soft-cap, so the reference is float32 SDPA and the rows are our kernel's 256-wide tile
candidates (``TILES_256``), plus the default with Gemma2's 4096-token window on (its sliding
layers). ``--pick FILE`` writes the fastest candidate over all batches (within the error bound).
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

HEADS = {"qwen3-0.6b": (16, 8), "llama-3.1-8b": (32, 8), "gemma2-2b": (8, 4), "gemma2-9b": (16, 8)}
GEMMA2 = {"head_dim": 256, "softcap": 50.0, "window": 4096}  # the soft-capped models' attention
TILES = {  # name → Triton launch config
    "m64n64w4": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m128n64w8": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "m128n128w8": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    "m128n64w4": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m64n128w4": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
}
# 256-wide heads: q [BM, 256] + stages x (k, v [BN, 256]) bf16 within 227 KiB of shared memory
TILES_256 = {
    "m64n32w4s3": {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3},    # 128 KiB
    "m64n64w4s2": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},    # 160 KiB
    "m64n64w8s2": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},    # 160 KiB
    "m128n32w8s3": {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3},  # 160 KiB
    "m128n64w8s2": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},  # 192 KiB
}
MAX_ERR_256 = 3e-2  # bf16 kernel vs float32 SDPA (outputs are averages of N(0, 1) values)


GQA_NATIVE = [True]  # the torch kernel's GQA verdict, probed once in main()

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


def bench_softcap_case(name: str, lengths: list[int], heads: int, kv_heads: int, calls: int) -> dict:
    """Gemma2's attention (256-wide heads, soft-capped): each 256 tile candidate vs float32 SDPA."""
    d, cap = GEMMA2["head_dim"], GEMMA2["softcap"]
    q, k, v, meta = make_inputs(lengths, heads, kv_heads, d)
    scale = d ** -0.5
    real = lengths[:-1] if name.startswith("single") else lengths
    flops = attention_flops(real, heads, d)
    ref = attention._sdpa_masked(q.float(), k.float(), v.float(), meta, True, scale, None, cap)
    row = {"lengths": len(lengths), "tokens": sum(lengths), "max_seqlen": meta.max_seqlen}
    runs = {f"triton_{n}": (lambda t=t: triton_attention.launch(q, k, v, meta.cu_seqlens, meta.max_seqlen,
                                                                is_causal=True, scale=scale, softcap=cap, tiles=t))
            for n, t in TILES_256.items()}
    runs["triton_default_window"] = lambda: triton_attention.launch(
        q, k, v, meta.cu_seqlens, meta.max_seqlen, is_causal=True, scale=scale, softcap=cap, window=GEMMA2["window"])
    for key, fn in runs.items():
        try:
            err = (fn().float() - ref).abs().max().item()
            us = time_graph(fn, calls)
            row[key] = {"us": round(us, 2), "tflops": round(flops / us / 1e6, 1), "max_abs_vs_fp32": err}
        except Exception as exc:  # noqa: BLE001 - a tile that does not fit must not end the run
            row[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return row


def pick_256(cases: dict) -> dict:
    """The 256 candidate with the least total time over every batch, among those that ran all of
    them within MAX_ERR_256."""
    totals = {}
    for name in TILES_256:
        cells = [row.get(f"triton_{name}", {}) for row in cases.values()]
        if all("us" in c and c["max_abs_vs_fp32"] <= MAX_ERR_256 for c in cells):
            totals[name] = sum(c["us"] for c in cells)
    best = min(totals, key=totals.get)
    return {"best": best, "tiles": TILES_256[best], "total_us": totals, "cases": len(cases)}


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
    ref = attention._torch_flash(q, k, v, meta, True, scale, None, GQA_NATIVE[0])
    row = {"lengths": len(lengths), "tokens": sum(lengths), "max_seqlen": meta.max_seqlen}
    runs = {"torch_fa2": lambda: attention._torch_flash(q, k, v, meta, True, scale, None, GQA_NATIVE[0])}
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
    p.add_argument("--pick", default="", help="write the fastest 256-wide tile candidate here (gemma2 models)")
    args = p.parse_args(argv)
    GQA_NATIVE[0] = attention.probe_torch_flash(torch.device("cuda"))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for model in args.models.split(","):
        heads, kv_heads = HEADS[model]
        for name, lengths in batches().items():
            bench = bench_softcap_case if model.startswith("gemma2") else bench_case
            row = bench(name, lengths, heads, kv_heads, args.calls)
            result["cases"][f"{model}/{name}"] = row
            Path(args.out).write_text(json.dumps(result, indent=1))
            cells = "  ".join(f"{k}={v['us']}us/{v['tflops']}TF" for k, v in row.items()
                              if isinstance(v, dict) and "us" in v)
            print(f"{model}/{name} T={row['tokens']}: {cells}", flush=True)
    gemma = {k: v for k, v in result["cases"].items() if k.startswith("gemma2")}
    if args.pick and gemma:
        result["pick_256"] = pick_256(gemma)
        Path(args.pick).write_text(json.dumps(result["pick_256"], indent=1))
        Path(args.out).write_text(json.dumps(result, indent=1))
        print("256-wide tiles:", result["pick_256"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
