"""The GPU benchmark's table and its verdict against issue 5's targets."""
from __future__ import annotations

TARGETS = {  # (model, what, threshold, higher is better)
    "qwen3-0.6b offline tok/s >= 400k": ("qwen3-0.6b", "offline_tok_s", 400_000, True),
    "qwen3-0.6b offline >= 3x length-sorted transformers": ("qwen3-0.6b", "speedup_vs_sorted", 3.0, True),
    "llama-3.1-8b offline tok/s >= 40k": ("llama-3.1-8b", "offline_tok_s", 40_000, True),
    "llama-3.1-8b offline MFU >= 65%": ("llama-3.1-8b", "offline_mfu", 0.65, True),
    "qwen3-0.6b 512-token gRPC p50 <= 3.5 ms": ("qwen3-0.6b", "grpc_p50_512", 3.5, False),
    "llama-3.1-8b 512-token gRPC p50 <= 12 ms": ("llama-3.1-8b", "grpc_p50_512", 12.0, False),
    "qwen3-0.6b gRPC saturation >= 90% of offline": ("qwen3-0.6b", "grpc_over_offline", 0.9, True),
    "llama-3.1-8b gRPC saturation >= 90% of offline": ("llama-3.1-8b", "grpc_over_offline", 0.9, True),
}


def _best(m: dict, prefix: str, wl: str = "lognormal") -> dict:
    found = [v for k, v in m.items() if k.startswith(prefix) and k.endswith("/" + wl) and isinstance(v, dict)
             and "tok_s" in v]
    return max(found, key=lambda v: v["tok_s"], default={})


def figures(m: dict) -> dict:
    """The numbers the targets read, from one model's results (lognormal workload)."""
    engine, sorted_hf, grpc = _best(m, "engine_"), _best(m, "hf_sorted"), _best(m, "grpc_")
    lat = next((v for k, v in m.items() if k.startswith("latency_grpc") and isinstance(v, dict) and "512" in v), {})
    out = {"offline_tok_s": engine.get("tok_s"), "offline_mfu": engine.get("mfu"),
           "grpc_p50_512": lat.get("512", {}).get("p50_ms")}
    if engine and sorted_hf:
        out["speedup_vs_sorted"] = engine["tok_s"] / sorted_hf["tok_s"]
    if engine and grpc:
        out["grpc_over_offline"] = grpc["tok_s"] / engine["tok_s"]
    return out


def targets(data: dict) -> dict:
    verdict = {}
    for label, (model, key, threshold, higher) in TARGETS.items():
        value = figures(data["models"].get(model, {})).get(key)
        if value is None:
            continue
        verdict[label] = {"value": value, "met": value >= threshold if higher else value <= threshold}
    return verdict


def _fmt(v, scale=1.0, digits=1) -> str:
    return "-" if v is None else f"{v * scale:,.{digits}f}"


def print_table(data: dict) -> None:
    meta = data["meta"]
    peak = data.get("peak_matmul", {}).get("tflops")
    print(f"\n{meta['device']}  torch {meta['torch']}  transformers {meta['transformers']}  {meta['date']}"
          f"  measured bf16 matmul peak: {_fmt(peak)} TFLOP/s")
    print(f"{'model':13} {'workload':9} {'method':22} {'tok/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GB':>8}")
    for model, m in data["models"].items():
        for key, v in m.items():
            if not (isinstance(v, dict) and "tok_s" in v):
                continue
            method, wl = key.split("/")
            mem = v.get("peak_mem_gb", v.get("server_gpu_mem_gb"))
            print(f"{model:13} {wl:9} {method:22} {_fmt(v['tok_s'], digits=0):>10} {_fmt(v.get('tflops')):>8} "
                  f"{_fmt(v.get('mfu'), 100):>5}% {_fmt(mem):>8}")
    print(f"\n{'model':13} {'single request latency':28} {'128 p50/p99 ms':>16} {'512 p50/p99':>14} {'2048 p50/p99':>14}")
    for model, m in data["models"].items():
        for key, v in m.items():
            if key.startswith("latency_") and isinstance(v, dict) and "512" in v:
                cells = [f"{v[n]['p50_ms']:.2f}/{v[n]['p99_ms']:.2f}" if n in v else "-" for n in ("128", "512", "2048")]
                print(f"{model:13} {key[8:]:28} {cells[0]:>16} {cells[1]:>14} {cells[2]:>14}")
    for label, v in data.get("targets", {}).items():
        print(f"{'MET ' if v['met'] else 'MISS'} {label}: {v['value']:,.3f}")
