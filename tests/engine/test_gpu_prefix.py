"""GPU parity of shared-prefix reuse: bfloat16 through the default attention backend (our Triton
kernel's prefix path), eager and compiled + CUDA graphs, reuse on against --no-prefix-reuse on
the same checkpoint, within the packed-vs-alone bf16 budget of test_gpu_parity.py.

Per decoder family (Llama, Qwen2 with a sliding-window layer, Qwen3, Mistral with a window,
Gemma2 with soft-capping, a window and 256-wide heads): a GRPO-like batch (two prompts of 300
and 700 tokens, their responses 1..200 tokens, an unrelated sequence), every token's hidden
state (token_embed: the ALL rows, prefix rows included), the LAST scores, MEAN embeddings and
STEP rows; small batches replay CUDA graphs (the prefix table rides in the staging row), and
compile must really compile (no fallback). Set REWARDSERVE_PARITY_JSON=path to record the
differences seen.
"""
from __future__ import annotations

import pytest
import torch

from gpu_testlib import MODES, decoder_builders, max_abs, rel_l2, recorder, save_checkpoints, serving_torch_settings

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

pytest.importorskip("transformers")  # gpu_testlib's checkpoint builders

STEP = 3
TOL = {"hidden_rel": 1e-2, "logits_abs": 1e-2}  # test_gpu_parity.py: packed_vs_alone_rel / _logits_abs
RESULTS: dict = {"tolerances": TOL, "models": {}}
WITHIN_BATCH = 4 * 288 + 1 * 688 + 2 * 288  # tokens _inputs' batch reuses within itself (cache off)
_record = recorder(RESULTS)


def _inputs(seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        out = torch.randint(4, 400, (n,), generator=gen)
        out[torch.rand(n, generator=gen) < 0.05] = STEP
        return out.tolist()
    a, b = ids(300), ids(700)
    return ([a + ids(n) for n in (1, 7, 64, 65, 200)] + [b + ids(n) for n in (3, 120)] + [ids(150)]
            + [a + ids(n) for n in (33, 2)])


def _engine(folder, reuse: bool, cache_gb: float | None = 0, **runner):
    """cache_gb 0: within-batch sharing only (the counts below assume it); None: the default."""
    from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
    from rewardserve.engine.engine import Engine

    serving_torch_settings()
    return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="bfloat16"),
                               runner=RunnerConfig(device="cuda", attention_backend="triton", **runner),
                               prefix=PrefixConfig(prefix_reuse=reuse, prefix_cache_gb=cache_gb if reuse else None)))


def _encode(engine, seqs) -> dict:
    from rewardserve.engine.types import PoolingParams, PoolingType

    out = {
        "ALL": engine.encode(seqs, "token_embed", PoolingParams(normalize=False)),
        "LAST": engine.encode(seqs, "classify", PoolingParams(use_activation=False)),
        "MEAN": engine.encode(seqs, "embed", PoolingParams(pooling_type=PoolingType.MEAN, normalize=False)),
        "STEP": engine.encode(seqs, "token_classify", PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=STEP,
                                                                    use_activation=False)),
    }
    return out


def _compare(on, off, seqs) -> dict:
    """Reuse on against off on seqs and on a small batch (graph buckets): the differences, the
    tokens reused and the runner's stats (to record before _check asserts)."""
    from rewardserve.engine.compiled import num_compiled_graphs

    def data(results) -> list[torch.Tensor]:
        return [r.data for r in results]
    before = num_compiled_graphs()
    got = _encode(on, seqs)
    graphs_on = num_compiled_graphs() - before  # graphs this engine compiled (warm-up, recompiles)
    want = _encode(off, seqs)
    graphs_off = num_compiled_graphs() - before - graphs_on
    small_got, small_want = _encode(on, seqs[-2:] + seqs[:1]), _encode(off, seqs[-2:] + seqs[:1])
    diffs = {"ALL_rel": rel_l2(data(got["ALL"]), data(want["ALL"])),
             "MEAN_rel": rel_l2(data(got["MEAN"]), data(want["MEAN"])),
             "LAST_abs": max_abs(data(got["LAST"]), data(want["LAST"])),
             "STEP_abs": max_abs(data(got["STEP"]), data(want["STEP"])),
             "small_ALL_rel": rel_l2(data(small_got["ALL"]), data(small_want["ALL"])),
             "small_LAST_abs": max_abs(data(small_got["LAST"]), data(small_want["LAST"])),
             "reused_tokens": sum(r.reused_tokens for r in got["LAST"]),
             "small_reused_tokens": sum(r.reused_tokens for r in small_got["LAST"]),
             "graphs_on": graphs_on, "graphs_off": graphs_off,
             "runner": {k: v for k, v in on.core.runner.stats.items() if k != "buckets"}}
    return diffs


def _check(diffs: dict, mode: str) -> None:
    """The tolerances, reuse in the small batch too, and compile+graphs really compiled and captured."""
    assert diffs["small_reused_tokens"] > 0, (mode, diffs)
    for key in ("ALL_rel", "MEAN_rel", "small_ALL_rel"):
        assert diffs[key] <= TOL["hidden_rel"], (mode, key, diffs)
    for key in ("LAST_abs", "STEP_abs", "small_LAST_abs"):
        assert diffs[key] <= TOL["logits_abs"], (mode, key, diffs)
    if mode == "compile+graphs":
        assert diffs["runner"]["compile"] is True and diffs["runner"]["cuda_graphs"] is True, diffs["runner"]
        # Reuse compiles no more graphs than no reuse (one; the cache test warmed ``on`` up before).
        assert 0 < diffs["graphs_off"] and diffs["graphs_on"] <= diffs["graphs_off"], diffs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_checkpoints(tmp_path_factory, decoder_builders())


@pytest.mark.parametrize("name", list(decoder_builders()))
def test_bf16_reuse_equals_no_reuse(name, checkpoints):
    seqs = _inputs()
    record = RESULTS["models"][name] = {}
    for mode, flags in MODES.items():
        on, off = _engine(checkpoints[name], True, **flags), _engine(checkpoints[name], False, **flags)
        assert on.core.prefix is not None and off.core.prefix is None
        record[mode] = diffs = _compare(on, off, seqs)
        _check(diffs, mode)
        assert diffs["reused_tokens"] == WITHIN_BATCH
        del on, off
        torch.cuda.empty_cache()


@pytest.mark.parametrize("name", list(decoder_builders()))
def test_bf16_prefix_cache_equals_no_reuse(name, checkpoints):
    """The prefix cache (default size) across calls: a first call caches the prompts, the next
    ones read them through the Triton kernel's block table (eager, and compiled with the small
    batches replaying CUDA graphs), within the same budget as within-batch reuse."""
    seqs = _inputs()
    record = RESULTS["models"].setdefault(name, {})
    for mode, flags in MODES.items():
        on, off = _engine(checkpoints[name], True, cache_gb=None, **flags), _engine(checkpoints[name], False, **flags)
        assert on.core.runner.cache is not None
        on.encode(seqs, "classify")  # caches both prompts (and every sequence's full blocks)
        diffs = _compare(on, off, seqs)
        stats = on.core.runner.cache.stats
        record[f"cache/{mode}"] = {**diffs, "cache_hit_tokens": stats.hit_tokens,
                                   "cache_queried_tokens": stats.queried_tokens}
        _check(diffs, mode)
        assert diffs["reused_tokens"] > WITHIN_BATCH and stats.hit_tokens > 0
        del on, off
        torch.cuda.empty_cache()
