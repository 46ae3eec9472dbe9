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
    # issue 21: Gemma2 through the Triton kernel
    "gemma2-2b offline >= 4x length-sorted transformers": ("gemma2-2b", "speedup_vs_sorted", 4.0, True),
    "gemma2-2b 512-token engine p50 <= 5 ms": ("gemma2-2b", "engine_p50_512", 5.0, False),
    "gemma2-9b offline MFU >= 60%": ("gemma2-9b", "offline_mfu", 0.60, True),
}


def _best(m: dict, prefix: str, wl: str = "lognormal") -> dict:
    found = [v for k, v in m.items() if k.startswith(prefix) and k.endswith("/" + wl) and isinstance(v, dict)
             and "tok_s" in v]
    return max(found, key=lambda v: v["tok_s"], default={})


def figures(m: dict) -> dict:
    """The numbers the targets read, from one model's results (lognormal workload)."""
    engine, sorted_hf, grpc = _best(m, "engine_"), _best(m, "hf_sorted"), _best(m, "grpc_")
    # End to end through gRPC: the faster of the blocking RewardClient and the AsyncRewardClient
    # (both are shipped client paths; the table prints each).
    grpc_512 = [v["512"]["p50_ms"] for k, v in m.items()
                if k.startswith("latency_grpc") and isinstance(v, dict) and "p50_ms" in v.get("512", {})]
    engine_512 = [v["512"]["p50_ms"] for k, v in m.items()
                  if k.startswith("latency_engine") and isinstance(v, dict) and "p50_ms" in v.get("512", {})]
    out = {"offline_tok_s": engine.get("tok_s"), "offline_mfu": engine.get("mfu"),
           "grpc_p50_512": min(grpc_512, default=None), "engine_p50_512": min(engine_512, default=None)}
    if engine and sorted_hf:
        out["speedup_vs_sorted"] = engine["tok_s"] / sorted_hf["tok_s"]
    mode = next((k.split("/")[0][5:] for k, v in m.items() if k.startswith("grpc_") and v is grpc), None)
    twin = _best(m, f"engine_{mode}") if mode else {}
    if twin and grpc:  # the server against the offline engine in the same mode (eager or compile)
        out["grpc_over_offline"] = grpc["tok_s"] / twin["tok_s"]
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
        floor = m.get("grpc_health_floor")
        if isinstance(floor, dict) and "p50_ms" in floor:  # this machine's Python gRPC floor
            print(f"{model:13} {'grpc health check (floor)':28} {floor['p50_ms']:.2f}/{floor['p99_ms']:.2f}")
    for label, v in data.get("targets", {}).items():
        print(f"{'MET ' if v['met'] else 'MISS'} {label}: {v['value']:,.3f}")


def merge(runs: list[dict]) -> dict:
    """Several result files as one: each model's sections side by side (each keeps its own MFU)."""
    merged = {"meta": runs[0]["meta"], "models": {}}
    for run in runs:
        for model, sections in run["models"].items():
            merged["models"].setdefault(model, {}).update(sections)
    merged["targets"] = targets(merged)
    return merged


def markdown(data: dict, sources: list[str]) -> str:
    """The README table: throughput (both workloads), latency p50/p99, the targets' verdict."""
    lines = ["| model | method | lognormal tok/s | MFU | GRPO tok/s | MFU |", "|---|---|---:|---:|---:|---:|"]
    for model, m in data["models"].items():
        methods = dict.fromkeys(k.split("/")[0] for k, v in m.items() if isinstance(v, dict) and "tok_s" in v)
        for method in methods:
            cells = []
            for wl in ("lognormal", "grpo"):
                v = m.get(f"{method}/{wl}", {})
                cells += [_fmt(v.get("tok_s"), digits=0), f"{_fmt(v.get('mfu'), 100)}%"]
            lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "| model | single request (p50 / p99 ms) | 128 | 512 | 2048 |", "|---|---|---:|---:|---:|"]
    for model, m in data["models"].items():
        for key, v in m.items():
            if key.startswith("latency_") and isinstance(v, dict) and "512" in v:
                cells = [f"{v[n]['p50_ms']:.2f} / {v[n]['p99_ms']:.2f}" for n in ("128", "512", "2048")]
                lines.append(f"| {model} | {key[8:]} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for label, v in data["targets"].items():
        lines.append(f"| {label} | {v['value']:,.3f} | {'yes' if v['met'] else 'no'} |")
    lines += ["", "Sources: " + ", ".join(f"`{s}`" for s in sources)]
    return "\n".join(lines)


if __name__ == "__main__":  # python benchmarks/bench_report.py benchmarks/results/*.json
    import json
    import sys

    files = [f for f in sys.argv[1:] if "parity" not in f]
    print(markdown(merge([json.load(open(f)) for f in files]), [f.split("/")[-1] for f in files]))
