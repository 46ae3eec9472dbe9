"""Graphs torch.compile makes of the packed forward with prefix reuse, on the CPU.

The CPU's attention (the SDPA loop) reads cu_seqlens on the host and breaks the graph at every
layer, so the runner compiles only on CUDA. Here the Triton kernel's op (opaque to dynamo, as on
CUDA) runs in Triton's interpreter, and the compiled forward is the one graph the GPU gets.

Run as a script with TRITON_INTERPRET=1 (test_prefix_compile.py). Over the same varied batches
(one to seven sequences, with and without shared prefixes), it counts the graphs compiled for
the forward without reuse, with within-batch reuse (every batch carrying the prefix region, as
on CUDA) and with the prefix cache ([4, S] region, block table and slots); prints one JSON line:
those counts and each forward's worst relative difference from its eager forward (bf16)."""
from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import torch

from gpu_testlib import decoder_builders
from rewardserve.engine import staging, torch_setup
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.compiled import compile_forward, num_compiled_graphs
from rewardserve.engine.demo import build_tokenizer
from triton_cases import patch_interpreter


def batches() -> list[list[list[int]]]:
    gen = random.Random(0)

    def ids(n: int) -> list[int]:
        return [gen.randrange(4, 400) for _ in range(n)]
    a, b = ids(40), ids(70)
    return [[ids(30), ids(20), ids(9)], [ids(50)], [a + ids(5), a + ids(9), ids(12)], [ids(7), ids(3)],
            [a + ids(3), a + ids(17), b + ids(2), b + ids(8), ids(5)], [a + ids(4)], [b + ids(6)]]


def engine(folder: Path, reuse: bool, cache_gb: float | None = None):
    from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
    from rewardserve.engine.engine import Engine

    eng = Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="bfloat16"), runner=RunnerConfig(device="cpu"),
                              prefix=PrefixConfig(prefix_reuse=reuse, prefix_cache_gb=cache_gb if reuse else None)))
    eng.core.runner.attention.backend = "triton"  # the op CUDA compiles (bf16 takes it; the interpreter runs it)
    return eng


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


class Item:
    def __init__(self, token_ids: list[int]):
        self.token_ids, self.positions = token_ids, [len(token_ids) - 1]


@torch.inference_mode()
def staged(folder: Path, reuse: bool) -> tuple[int, float]:
    """Every batch staged as on CUDA (the prefix region whenever reuse is on) and run through the
    compiled and the eager forward: (graphs compiled, worst difference)."""
    eng = engine(folder, reuse)
    runner = eng.core.runner
    eager, compiled = runner.forward, compile_forward(runner.model)
    start, worst, shared = num_compiled_graphs(), 0.0, 0
    for lengths in batches():
        plan = PackedBatch.of([Item(x) for x in lengths], eng.core.prefix)
        shared += plan.prefix is not None
        layout = staging.Layout(plan.num_tokens, plan.num_seqs, plan.num_rows, reuse)
        host = torch.empty(layout.total, dtype=torch.int64)
        staging.fill(host.numpy(), plan, layout)
        runner.wrap_forward(lambda _: compiled)
        got = runner.run_staged(host, layout, None, plan.max_seqlen)[0]
        runner.wrap_forward(lambda _: eager)
        worst = max(worst, rel(got, runner.run_staged(host, layout, None, plan.max_seqlen)[0]))
    assert shared == (2 if reuse else 0), shared  # the batches with a and b share them
    return num_compiled_graphs() - start, worst


def cached(folder: Path) -> tuple[int, float]:
    """The prefix cache: each batch twice through the engine (the second reads the first's
    blocks), compiled, against an eager engine's scores."""
    eng, ref = engine(folder, True, cache_gb=0.01), engine(folder, True, cache_gb=0.01)
    assert eng.core.runner.cache is not None
    compiled = compile_forward(eng.core.runner.model)
    eng.core.runner.wrap_forward(lambda _: compiled)
    start, worst = num_compiled_graphs(), 0.0
    for lengths in batches() * 2:
        got = torch.stack([r.data for r in eng.encode(lengths, "classify")])
        worst = max(worst, rel(got, torch.stack([r.data for r in ref.encode(lengths, "classify")])))
    assert eng.core.runner.cache.stats.hit_tokens > 0
    return num_compiled_graphs() - start, worst


def main() -> dict:
    patch_interpreter()
    torch_setup.configure(None)  # the entry points' settings: no duck shaping, a recompile limit of 64
    folder = Path(tempfile.mkdtemp()) / "qwen3"
    build_tokenizer(folder)
    torch.manual_seed(0)
    decoder_builders()["qwen3"]().save_pretrained(str(folder))  # 64-wide heads: the Triton path
    out = {}
    for name, run in (("no_reuse", lambda: staged(folder, False)), ("reuse", lambda: staged(folder, True)),
                      ("cache", lambda: cached(folder))):
        out[f"{name}_graphs"], out[f"{name}_rel"] = run()
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
