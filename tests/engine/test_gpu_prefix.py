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

import json
import os

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

tf = pytest.importorskip("transformers")

WINDOW = 64
STEP = 3
SIZES = dict(vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1, pad_token_id=0,
             bos_token_id=0, eos_token_id=0, num_labels=1)
TOL = {"hidden_rel": 1e-2, "logits_abs": 1e-2}  # test_gpu_parity.py: packed_vs_alone_rel / _logits_abs
MODES = {"eager": dict(compile=False, cuda_graphs=False), "compile+graphs": dict(compile=True, cuda_graphs=True)}
RESULTS: dict = {"tolerances": TOL, "models": {}}


def _builders():
    c = dict(SIZES)
    return {
        "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**c)),
        "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(
            **c, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
        "qwen3": lambda: tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**c, head_dim=64)),
        "mistral": lambda: tf.MistralForSequenceClassification(tf.MistralConfig(
            **c, head_dim=64, sliding_window=WINDOW)),
        "gemma2": lambda: tf.Gemma2ForSequenceClassification(tf.Gemma2Config(
            **c, head_dim=256, sliding_window=WINDOW, attn_logit_softcapping=5.0, query_pre_attn_scalar=256)),
    }


@pytest.fixture(autouse=True)
def _record():
    yield
    path = os.environ.get("REWARDSERVE_PARITY_JSON")
    if path:
        RESULTS["device"] = torch.cuda.get_device_name()
        with open(path, "w") as f:
            json.dump(RESULTS, f, indent=1)


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


def _rel(got, want) -> float:
    a, b = torch.cat([r.data.reshape(-1) for r in got]).float(), torch.cat([r.data.reshape(-1) for r in want]).float()
    return float((a - b).norm() / b.norm())


def _abs(got, want) -> float:
    a, b = torch.cat([r.data.reshape(-1) for r in got]).float(), torch.cat([r.data.reshape(-1) for r in want]).float()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from rewardserve.engine.demo import build_tokenizer

    out = {}
    for name, build in _builders().items():
        folder = tmp_path_factory.mktemp(name)
        build_tokenizer(folder)
        torch.manual_seed(0)
        build().save_pretrained(str(folder))
        out[name] = folder
    return out


@pytest.mark.parametrize("name", list(_builders()))
def test_bf16_reuse_equals_no_reuse(name, checkpoints):
    seqs = _inputs()
    record = RESULTS["models"][name] = {}
    for mode, flags in MODES.items():
        on, off = _engine(checkpoints[name], True, **flags), _engine(checkpoints[name], False, **flags)
        assert on.core.prefix is not None and off.core.prefix is None
        got, want = _encode(on, seqs), _encode(off, seqs)
        small_got, small_want = _encode(on, seqs[-2:] + seqs[:1]), _encode(off, seqs[-2:] + seqs[:1])  # graph buckets
        diffs = {"ALL_rel": _rel(got["ALL"], want["ALL"]), "MEAN_rel": _rel(got["MEAN"], want["MEAN"]),
                 "LAST_abs": _abs(got["LAST"], want["LAST"]), "STEP_abs": _abs(got["STEP"], want["STEP"]),
                 "small_ALL_rel": _rel(small_got["ALL"], small_want["ALL"]),
                 "small_LAST_abs": _abs(small_got["LAST"], small_want["LAST"]),
                 "reused_tokens": sum(r.reused_tokens for r in got["LAST"]),
                 "runner": {k: v for k, v in on.core.runner.stats.items() if k != "buckets"}}
        record[mode] = diffs
        assert diffs["reused_tokens"] == 4 * 288 + 1 * 688 + 2 * 288
        assert sum(r.reused_tokens for r in small_got["LAST"]) > 0
        for key in ("ALL_rel", "MEAN_rel", "small_ALL_rel"):
            assert diffs[key] <= TOL["hidden_rel"], (mode, key, diffs)
        for key in ("LAST_abs", "STEP_abs", "small_LAST_abs"):
            assert diffs[key] <= TOL["logits_abs"], (mode, key, diffs)
        if mode == "compile+graphs":
            assert on.core.runner.stats["compile"] is True and on.core.runner.stats["cuda_graphs"] is True
        del on, off
        torch.cuda.empty_cache()


@pytest.mark.parametrize("name", list(_builders()))
def test_bf16_prefix_cache_equals_no_reuse(name, checkpoints):
    """The prefix cache (default size) across calls: a first call caches the prompts, the next
    ones read them through the Triton kernel's block table (eager, and compiled with the small
    batches replaying CUDA graphs), within the same budget as within-batch reuse."""
    seqs = _inputs()
    record = RESULTS["models"].setdefault(name, {})
    within_batch = 4 * 288 + 1 * 688 + 2 * 288
    for mode, flags in MODES.items():
        on, off = _engine(checkpoints[name], True, cache_gb=None, **flags), _engine(checkpoints[name], False, **flags)
        assert on.core.runner.cache is not None
        on.encode(seqs, "classify")  # caches both prompts (and every sequence's full blocks)
        got, want = _encode(on, seqs), _encode(off, seqs)
        small_got, small_want = _encode(on, seqs[-2:] + seqs[:1]), _encode(off, seqs[-2:] + seqs[:1])
        stats = on.core.runner.cache.stats
        diffs = {"ALL_rel": _rel(got["ALL"], want["ALL"]), "MEAN_rel": _rel(got["MEAN"], want["MEAN"]),
                 "LAST_abs": _abs(got["LAST"], want["LAST"]), "STEP_abs": _abs(got["STEP"], want["STEP"]),
                 "small_ALL_rel": _rel(small_got["ALL"], small_want["ALL"]),
                 "small_LAST_abs": _abs(small_got["LAST"], small_want["LAST"]),
                 "reused_tokens": sum(r.reused_tokens for r in got["LAST"]),
                 "cache_hit_tokens": stats.hit_tokens, "cache_queried_tokens": stats.queried_tokens,
                 "runner": {k: v for k, v in on.core.runner.stats.items() if k != "buckets"}}
        record[f"cache/{mode}"] = diffs
        assert diffs["reused_tokens"] > within_batch and stats.hit_tokens > 0
        assert sum(r.reused_tokens for r in small_got["LAST"]) > 0
        for key in ("ALL_rel", "MEAN_rel", "small_ALL_rel"):
            assert diffs[key] <= TOL["hidden_rel"], (mode, key, diffs)
        for key in ("LAST_abs", "STEP_abs", "small_LAST_abs"):
            assert diffs[key] <= TOL["logits_abs"], (mode, key, diffs)
        if mode == "compile+graphs":
            assert on.core.runner.stats["compile"] is True and on.core.runner.stats["cuda_graphs"] is True
        del on, off
        torch.cuda.empty_cache()
