"""GPU benchmark: transformers padded baselines vs our engine offline and through gRPC.

One command on the GPU machine (random weights, real shapes, seeded workloads)::

    python benchmarks/gpu_bench.py --models qwen3-0.6b --out results.json
    python benchmarks/gpu_bench.py --models llama-3.1-8b --modes eager --out 8b.json
    python benchmarks/gpu_bench.py --models gemma2-2b --modes compile --sections hf,engine,latency --out g.json
    python benchmarks/gpu_bench.py --models qwen3-0.6b,llama-3.1-8b --sections prefix --out prefix.json

Per model and workload (lognormal lengths around 600 tokens; GRPO-like groups of 16 responses
sharing a prompt) it measures tokens/s, model TFLOP/s and MFU against the bf16 matmul peak
measured in the same run, and peak memory, for: transformers right-padded batches in arrival
order and length-sorted, our engine offline (eager and/or torch.compile; CUDA graphs on), and
our engine behind ``rewardserve serve`` driven by concurrent AsyncRewardClient calls; then
single-request latency p50/p99 at 128, 512 and 2048 tokens, offline and end to end. The
``prefix`` section (issue 18, ``bench_prefix.py``) runs the long-prompt GRPO workload (1,024-token
prompts, groups of 16, responses lognormal around 256) with prefix reuse on (the prefix cache at
its default size), with --prefix-cache-gb 0 and with --no-prefix-reuse, offline and streamed (8
groups in flight over StreamReward, items one by one); the other sections run with the prefix
cache off (they repeat the same ids). It writes JSON after every section (a run cut short keeps what it measured) and prints a
table last.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402
import bench_grpc  # noqa: E402
import bench_hf  # noqa: E402
import bench_models  # noqa: E402
import bench_prefix  # noqa: E402
import bench_score  # noqa: E402
import bench_workloads  # noqa: E402
from bench_report import print_table, targets  # noqa: E402

DEFAULTS = {  # sequences per workload: engine / transformers subset; GRPO groups; grpo_long groups of 16
    "qwen3-0.6b": dict(num_seqs=1024, hf_seqs=256, grpo_groups=48, long_groups=32),
    "llama-3.1-8b": dict(num_seqs=192, hf_seqs=64, grpo_groups=10, long_groups=8),
    "gemma2-2b": dict(num_seqs=512, hf_seqs=64, grpo_groups=24, long_groups=16),
    "gemma2-9b": dict(num_seqs=192, hf_seqs=32, grpo_groups=10, long_groups=8),
    "tiny": dict(num_seqs=64, hf_seqs=32, grpo_groups=2, long_groups=8),
}
SECTIONS = ("hf", "engine", "latency", "profile", "grpc", "prefix")  # "score" only when named (--sections score)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen3-0.6b", help="comma list of " + ", ".join(bench_models.SHAPES))
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    p.add_argument("--modes", default="eager,compile", help="engine modes (CUDA graphs on in both): eager, compile")
    p.add_argument("--grpc-mode", default="compile", choices=("eager", "compile"), help="engine mode of the server")
    p.add_argument("--workloads", default="lognormal,grpo")
    p.add_argument("--num-seqs", type=int, default=0, help="engine workload size (0: per-model default)")
    p.add_argument("--hf-seqs", type=int, default=0, help="transformers subset size (0: per-model default)")
    p.add_argument("--prefix-groups", type=int, default=0, help="prefix section: grpo_long groups of 16 "
                   "(0: per-model default)")
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--hf-orders", default="fifo,sorted", help="transformers batch orders: fifo (arrival), sorted")
    p.add_argument("--tiles-256", default="",
                   help="offline engine only: a JSON file whose 'tiles' replace the Triton kernel's 256-wide "
                        "head tiles (bench_attention.py --pick writes one)")
    p.add_argument("--max-num-batched-tokens", type=int, default=16384)
    p.add_argument("--latency-n", type=int, default=50)
    p.add_argument("--attention-backend", default="auto", help="engine and server: auto, triton, torch, flash_attn")
    p.add_argument("--no-rope-table", action="store_true",
                   help="offline engine only: compute rotary cos/sin per forward (A/B of the table lookup)")
    p.add_argument("--event-loop", default="auto", help="the server's event loop: auto, asyncio, uvloop")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", default="/tmp/rewardserve-bench", help="where checkpoints are written")
    p.add_argument("--logdir", default="", help="server logs (default: next to --out)")
    p.add_argument("--out", default="gpu_bench.json")
    p.add_argument("--score-model", default="bge-reranker-v2-m3", help="Score section's reranker shape: "
                   + ", ".join(bench_score.SHAPES))
    return p.parse_args(argv)


class Run:
    """The JSON being built, saved after every section."""

    def __init__(self, args):
        self.args, self.path = args, Path(args.out)
        cuda = args.device == "cuda"
        import transformers

        self.data = {"meta": {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name()
                              if cuda else "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
                              "argv": sys.argv[1:], "python": sys.version.split()[0]}, "models": {}}
        if cuda:  # the Triton kernel's launch configs this run used, per head size
            from rewardserve.engine import triton_attention

            self.data["meta"]["triton_tiles"] = {d: triton_attention.pick_tiles(d) for d in (64, 128, 256)}
        self.start = time.monotonic()

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1))

    def section(self, model: str, key: str, fn, *a, **kw):
        """Run one measurement; record its result (or its error) and save."""
        t = time.monotonic()
        print(f"[{time.monotonic() - self.start:6.1f}s] {model}: {key} ...", flush=True)
        try:
            value = fn(*a, **kw)
        except Exception as exc:  # noqa: BLE001 - keep measuring the rest
            import traceback

            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(value, dict):
            value.setdefault("section_s", round(time.monotonic() - t, 1))
        self.data["models"].setdefault(model, {})[key] = value
        self.save()
        return value


def with_flops(result: dict, flops: float, peak: float | None) -> dict:
    if "seconds" in result:
        result["tflops"] = flops / result["seconds"] / 1e12
        result["mfu"] = result["tflops"] / peak if peak else None
    return result


def bench_model(run: Run, name: str) -> None:
    args, d = run.args, DEFAULTS.get(name, DEFAULTS["tiny"])
    cuda, sections = args.device == "cuda", args.sections.split(",")
    limit = bench_models.SAFE_ID_LIMIT[name]
    n, hf_n, groups = args.num_seqs or d["num_seqs"], args.hf_seqs or d["hf_seqs"], d["grpo_groups"]
    loads = {"lognormal": bench_workloads.lognormal(n, limit), "grpo": bench_workloads.grpo(groups, limit),
             "grpo_long": bench_workloads.grpo_long(d["long_groups"], limit)}
    loads = {k: v for k, v in loads.items() if k in args.workloads.split(",")}
    run.data["models"].setdefault(name, {})["workloads"] = {k: bench_workloads.describe(v) for k, v in loads.items()}
    peak = run.data.get("peak_matmul", {}).get("tflops")
    dtype = torch.bfloat16 if cuda else torch.float32
    folder, hf, build_s = bench_models.build(name, Path(args.workdir), args.device, dtype)
    run.data["models"][name]["build_s"] = round(build_s, 1)
    if "hf" in sections:
        for wl, seqs in loads.items():
            subset = seqs[:hf_n]
            for order in args.hf_orders.split(","):
                r = run.section(name, f"hf_{order}/{wl}", bench_hf.run_padded, hf, subset, args.hf_batch_size,
                                bench_models.pad_id(name), order == "sorted", args.device)
                with_flops(r, bench_models.forward_flops(name, map(len, subset)), peak)
        run.data["models"][name]["hf_attn_implementation"] = hf.config._attn_implementation
    del hf
    _free()
    for mode in args.modes.split(","):
        if set(sections) & {"engine", "latency", "profile"}:
            bench_engine_mode(run, name, folder, mode, loads, peak, sections)
        if "grpc" in sections and mode == args.grpc_mode:  # the server right after its offline twin
            bench_server(run, name, folder, loads, peak)
    if "prefix" in sections:
        bench_prefix_reuse(run, name, folder, peak)
    run.save()


def bench_prefix_reuse(run: Run, name: str, folder, peak) -> None:
    """Issue 18: grpo_long with prefix reuse on and off, offline then streamed (--grpc-mode)."""
    args, d = run.args, DEFAULTS.get(name, DEFAULTS["tiny"])
    cuda = args.device == "cuda"
    seqs = bench_workloads.grpo_long(args.prefix_groups or d["long_groups"], bench_models.SAFE_ID_LIMIT[name])
    run.data["models"][name].setdefault("workloads", {})["grpo_long"] = bench_workloads.describe(seqs)
    dtype = "bfloat16" if cuda else "float32"
    mode = args.modes.split(",")[-1]
    r = run.section(name, "prefix/grpo_long", bench_prefix.offline, folder, seqs, device=args.device, dtype=dtype,
                    compile=mode == "compile", max_tokens=args.max_num_batched_tokens,
                    attention_backend=args.attention_backend)
    for key in bench_prefix.MODES:
        if isinstance(r.get(key), dict):
            with_flops(r[key], bench_models.forward_flops(name, map(len, seqs)), peak)
    groups = [seqs[i:i + 16] for i in range(0, len(seqs), 16)]
    logdir = Path(args.logdir) if args.logdir else Path(args.out).parent
    run.section(name, "prefix/grpo_long_streamed", bench_prefix.streamed, folder, groups, dtype=dtype,
                compile=args.grpc_mode == "compile", max_tokens=args.max_num_batched_tokens,
                attention_backend=args.attention_backend, logdir=logdir)


def bench_engine_mode(run: Run, name: str, folder, mode: str, loads: dict, peak, sections) -> None:
    args, cuda = run.args, run.args.device == "cuda"
    holder = []

    def setup() -> dict:
        engine, info = bench_engine.make_engine(folder, args.device, "bfloat16" if cuda else "float32",
                                                mode == "compile", True, args.max_num_batched_tokens,
                                                args.attention_backend)
        holder.append(engine)
        return info

    run.section(name, f"engine_{mode}/setup", setup)
    if not holder:
        return
    engine = holder.pop()
    if "engine" in sections:
        for wl, seqs in loads.items():
            r = run.section(name, f"engine_{mode}/{wl}", bench_engine.throughput, engine, seqs)
            with_flops(r, bench_models.forward_flops(name, map(len, seqs)), peak)
    limit = bench_models.SAFE_ID_LIMIT[name]
    if "latency" in sections:
        call = lambda ids: engine.encode(ids, task="classify")  # noqa: E731
        run.section(name, f"latency_engine_{mode}+graphs", bench_engine.latency, call, n=args.latency_n, id_limit=limit)
        if mode == "eager":
            engine.core.runner.use_graphs = False
            run.section(name, "latency_engine_eager", bench_engine.latency, call, n=args.latency_n, id_limit=limit)
            engine.core.runner.use_graphs = True
    if "profile" in sections and cuda and "lognormal" in loads:
        run.section(name, f"profile_engine_{mode}", bench_engine.profile, engine, loads["lognormal"][:64])
        one = [list(range(1, 513))]
        run.section(name, f"profile_engine_{mode}+graphs_512", bench_engine.profile, engine, one, repeats=20)
    from rewardserve.engine.compiled import num_compiled_graphs

    run.data["models"][name][f"engine_{mode}/setup"]["dynamo_graphs_at_end"] = num_compiled_graphs()
    del engine
    _free()


def bench_server(run: Run, name: str, folder, loads: dict, peak) -> None:
    args, cuda = run.args, run.args.device == "cuda"
    logdir = Path(args.logdir) if args.logdir else Path(args.out).parent
    server = bench_grpc.Server(folder, logdir / f"server-{name}.log", dtype="bfloat16" if cuda else "float32",
                               compile=args.grpc_mode == "compile", graphs=True, max_tokens=args.max_num_batched_tokens,
                               extra=("--attention-backend", args.attention_backend, "--event-loop", args.event_loop))
    try:
        up = run.section(name, "grpc/start", lambda: {"ready_s": server.start(), "mode": args.grpc_mode,
                                                      "event_loop": server.event_loop()})
        if "error" in up:
            return
        for wl, seqs in loads.items():
            bench_grpc.saturate(server.target, seqs[: max(8, len(seqs) // 8)])  # warm the server's shapes
            best = None
            for _ in range(2):
                r = run.section(name, f"grpc_{args.grpc_mode}/{wl}", bench_grpc.saturate, server.target, seqs)
                best = r if best is None or r.get("tok_s", 0) > best.get("tok_s", 0) else best
            with_flops(best, bench_models.forward_flops(name, map(len, seqs)), peak)
            best["server_gpu_mem_gb"] = server.gpu_memory_gb()
            run.data["models"][name][f"grpc_{args.grpc_mode}/{wl}"] = best
        limit = bench_models.SAFE_ID_LIMIT[name]
        run.section(name, f"latency_grpc_{args.grpc_mode}+graphs", bench_grpc.latency, server.target,
                    n=args.latency_n, id_limit=limit)
        run.section(name, f"latency_grpc_sync_{args.grpc_mode}+graphs", bench_grpc.sync_latency, server.target,
                    n=args.latency_n, id_limit=limit)
        run.section(name, "grpc_health_floor", bench_grpc.health_floor, server.target)
    finally:
        server.stop()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse(argv)
    if args.no_rope_table:
        from rewardserve.engine.models import rotary

        rotary.MAX_TABLE_POSITIONS = 0
    if args.tiles_256:
        from rewardserve.engine import triton_attention

        triton_attention.HEAD_DIM_256_TILES.update(json.loads(Path(args.tiles_256).read_text())["tiles"])
    run = Run(args)
    if args.device == "cuda":
        run.data["peak_matmul"] = bench_engine.peak_matmul_tflops()
        run.save()
    for name in (args.models.split(",") if set(args.sections.split(",")) - {"score"} else []):
        bench_model(run, name)
    if "score" in args.sections.split(","):  # Score on a reranker shape vs transformers (bench_score.py)
        run.section(args.score_model, "score", bench_score.run, args.score_model, Path(args.workdir), args.device,
                    args.max_num_batched_tokens, args.grpc_mode == "compile")
    run.data["targets"] = {**targets(run.data), **bench_prefix.targets(run.data)}
    run.save()
    print_table(run.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
