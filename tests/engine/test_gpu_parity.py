"""GPU parity: bfloat16 through the default attention backend (our Triton kernel), eager and compiled +
CUDA graphs, with the rotary tables and fused projections the loader applies.

For each decoder family (Llama, Qwen2 with a sliding-window layer, Qwen3, Mistral with a sliding
window, Gemma2 with soft-capping, a sliding window and 256-wide heads, Gemma3 with q/k norms, a
sliding window and 256-wide heads) a tiny checkpoint in the hub layout is
scored by the offline Engine: one packed batch of 10 inputs (1..300 tokens, the window is 64),
each input alone, and a 30-input batch over the largest graph bucket (the compiled dynamic path);
compile + graphs must really compile and capture (no fallback to the eager forward).
Compared with transformers' own right-padded float32 forward (the reference) and its bfloat16
forward (how far bf16 alone moves the result):
  - last hidden state of every token (token_embed, no normalisation): relative L2 error,
  - the LAST-pooled score (classify, raw logits): max abs error.
Set REWARDSERVE_PARITY_JSON=path to record the tolerances and every difference seen.
"""
from __future__ import annotations

import pytest
import torch

from gpu_testlib import (MODES, SIZES, WINDOW, decoder_builders, max_abs, rel_l2, recorder, save_checkpoints,
                         serving_torch_settings)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

tf = pytest.importorskip("transformers")

LENGTHS = (1, 2, 7, 33, 64, 65, 100, 150, 255, 300)
TOL = {  # bf16 has an 8-bit mantissa: ~0.4% per rounding, a few roundings per layer
    "hidden_rel_vs_fp32": 3e-2,        # ‖engine − fp32‖ / ‖fp32‖ over all tokens
    "logits_abs_vs_fp32": 1e-1,        # max |Δ score| / max(1, max |score|)
    "vs_hf_bf16_factor": 2.0,          # and at most 2x transformers-bf16's own error (+ the slack below)
    "vs_hf_bf16_slack": {"hidden_rel_vs_fp32": 5e-3, "logits_abs_vs_fp32": 2e-2},
    "packed_vs_alone_rel": 1e-2,       # relative L2, hidden; same kernels, different batch shapes
    "packed_vs_alone_logits_abs": 1e-2,
    "mode_vs_eager_rel": 2e-2,         # compiled + graphs vs eager, relative L2
}
DYNAMIC = "llama-dynamic-rope"
RESULTS: dict = {"tolerances": TOL, "lengths": LENGTHS, "window": WINDOW, "models": {}}


def _builders():
    """The shared decoder families (gpu_testlib) and Gemma3 and a dynamic-RoPE Llama."""
    c = dict(SIZES)
    return {
        **decoder_builders(),
        "gemma3": lambda: tf.Gemma3TextForSequenceClassification(tf.Gemma3TextConfig(
            **c, head_dim=256, sliding_window=WINDOW, query_pre_attn_scalar=256,
            layer_types=["sliding_attention", "full_attention"])),
        # trained on 128 positions, served to 512: the longer inputs scale RoPE (per sequence)
        DYNAMIC: lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(
            **{**c, "max_position_embeddings": 128}, rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
    }
_record = recorder(RESULTS)


def _inputs(seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 400, (n,), generator=gen).tolist() for n in LENGTHS]


@torch.no_grad()
def _hf_reference(folder, seqs, dtype, alone: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """transformers' right-padded forward: per-sequence hidden [n, H] and LAST scores [N, 1].

    ``alone``: one sequence per forward, shortest first (length-dependent RoPE: transformers
    scales a whole batch by its longest sequence and keeps the largest scale it has seen)."""
    hf = tf.AutoModelForSequenceClassification.from_pretrained(
        str(folder), dtype=dtype, attn_implementation="eager").cuda().eval()
    if not alone:
        return _hf_padded(hf, seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    outs = {i: _hf_padded(hf, [seqs[i]]) for i in order}
    return [outs[i][0][0] for i in range(len(seqs))], torch.cat([outs[i][1] for i in range(len(seqs))])


def _hf_padded(hf, seqs) -> tuple[list[torch.Tensor], torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    ids, mask = ids.cuda(), mask.cuda()
    hidden = getattr(hf, hf.base_model_prefix)(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = hf(input_ids=ids, attention_mask=mask).logits
    return [hidden[i, :len(s)].float().cpu() for i, s in enumerate(seqs)], logits.float().cpu()


def _engine(folder, max_model_len: int | None = None, **runner):
    from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
    from rewardserve.engine.engine import Engine

    serving_torch_settings()
    # No prefix cache: an input scored alone must compute its whole sequence, not read the keys
    # the packed call left in the cache (test_gpu_prefix.py checks the cache).
    return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="bfloat16", max_model_len=max_model_len),
                               runner=RunnerConfig(device="cuda", attention_backend="auto", **runner),
                               prefix=PrefixConfig(prefix_cache_gb=0)))


def _score(engine, seqs) -> tuple[list[torch.Tensor], torch.Tensor]:
    from rewardserve.engine.types import PoolingParams

    hidden = [r.data for r in engine.encode(seqs, task="token_embed", params=PoolingParams(normalize=False))]
    logits = [r.data for r in engine.encode(seqs, task="classify", params=PoolingParams(use_activation=False))]
    return hidden, torch.stack(logits)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_checkpoints(tmp_path_factory, _builders())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_kernels_gqa_window_and_causality(backend):
    """Each CUDA kernel against per-sequence SDPA in fp32: GQA, sliding window, non-causal, a
    bidirectional window; ours also soft-capped (Gemma2; the torch backend hands that to SDPA)."""
    from rewardserve.engine import attention

    gen = torch.Generator(device="cuda").manual_seed(1)
    lengths = [1, 5, 64, 65, 200]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total = int(cu[-1])
    q = torch.randn(total, 8, 128, device="cuda", generator=gen).bfloat16()   # [T, H, D]
    k, v = (torch.randn(total, 2, 128, device="cuda", generator=gen).bfloat16() for _ in range(2))
    meta = attention.VarlenMeta(cu, max(lengths))
    diffs = {}
    cases = [(True, None, None), (True, 16, None), (False, None, None), (False, 16, None)]
    if backend == "triton":
        cases += [(True, None, 2.0), (True, 16, 2.0)]
    kernel, sdpa = attention.AttentionContext(backend), attention.AttentionContext("sdpa")
    for causal, window, softcap in cases:
        got = attention.varlen_attention(q, k, v, meta, is_causal=causal, scale=128 ** -0.5, window=window,
                                         softcap=softcap, ctx=kernel)
        want = attention.varlen_attention(q.float(), k.float(), v.float(), meta, is_causal=causal,
                                          scale=128 ** -0.5, window=window, softcap=softcap, ctx=sdpa)
        diffs[f"causal={causal},window={window},softcap={softcap}"] = float((got.float() - want).abs().max())
    RESULTS[f"attention_kernel_max_abs_vs_fp32_sdpa/{backend}"] = diffs
    RESULTS["gqa_native"] = attention.probe_torch_flash(torch.device("cuda"))
    assert max(diffs.values()) <= 2e-2, diffs


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", DYNAMIC])
def test_bf16_packed_equals_alone_and_transformers(name, checkpoints):
    folder, seqs, alone = checkpoints[name], _inputs(), name == DYNAMIC
    ref_h, ref_l = _hf_reference(folder, seqs, torch.float32, alone)
    bf_h, bf_l = _hf_reference(folder, seqs, torch.bfloat16, alone)
    record = RESULTS["models"][name] = {"hf_bf16": {"hidden_rel_vs_fp32": rel_l2(bf_h, ref_h),
                                                    "logits_abs_vs_fp32": max_abs(bf_l, ref_l)}}
    eager_h = None
    for mode, flags in MODES.items():
        engine = _engine(folder, max_model_len=512 if alone else None, **flags)
        hidden, logits = _score(engine, seqs)
        alone = [_score(engine, [s]) for s in seqs]
        big_h, big_l = _score(engine, seqs * 3)  # over the largest graph bucket
        got = {"hidden_rel_vs_fp32": rel_l2(hidden, ref_h), "logits_abs_vs_fp32": max_abs(logits, ref_l),
               "packed_vs_alone_rel": rel_l2(hidden, [a[0][0] for a in alone]),
               "packed_vs_alone_logits_abs": max_abs(logits, torch.cat([a[1] for a in alone])),
               "big_batch_vs_packed_rel": rel_l2(big_h[:len(seqs)], hidden),
               "big_batch_logits_abs": max_abs(big_l[:len(seqs)], logits),
               "runner": {k: v for k, v in engine.core.runner.stats.items() if k != "buckets"},
               "attention_backend": engine.core.runner.backend}
        if eager_h is not None:
            got["mode_vs_eager_rel"] = rel_l2(hidden, eager_h)
        record[mode] = got
        eager_h = eager_h or hidden
        del engine
        torch.cuda.empty_cache()
        got["failures"] = _failures(got, record["hf_bf16"])
        if flags["compile"] and not (got["runner"].get("compile") is True and got["runner"].get("cuda_graphs") is True):
            got["failures"].append(f"compile + graphs fell back: {got['runner']}")
    assert not any(record[mode]["failures"] for mode in MODES), record


def _failures(got: dict, hf_bf16: dict) -> list[str]:
    """Every tolerance the measured differences break (empty: parity holds)."""
    limits = {key: TOL[key] for key in ("hidden_rel_vs_fp32", "logits_abs_vs_fp32", "packed_vs_alone_rel",
                                        "packed_vs_alone_logits_abs", "mode_vs_eager_rel")}
    limits["big_batch_vs_packed_rel"] = TOL["packed_vs_alone_rel"]
    limits["big_batch_logits_abs"] = TOL["packed_vs_alone_logits_abs"]
    out = [f"{key} {got[key]:.3g} > {limit:.3g}" for key, limit in limits.items() if got.get(key, 0) > limit]
    for key, slack in TOL["vs_hf_bf16_slack"].items():
        bound = TOL["vs_hf_bf16_factor"] * hf_bf16[key] + slack
        if got[key] > bound:
            out.append(f"{key} {got[key]:.3g} > {TOL['vs_hf_bf16_factor']}x transformers-bf16 + {slack}")
    return out


def test_encoder_with_a_short_position_table_compiles_and_captures(tmp_path):
    """BERT's 512 positions are fewer than the largest graph bucket (2048): warm-up, compile and
    capture must stay inside the position table (a device-side assert would kill the process)."""
    from rewardserve.engine.demo import build_tokenizer

    folder = tmp_path / "bert"
    build_tokenizer(folder)
    config = tf.BertConfig(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=512)
    config.architectures = ["BertModel"]
    tf.BertModel(config).save_pretrained(str(folder))
    seqs = [[5 + (i % 300) for i in range(n)] for n in (3, 100, 500, 511)]
    eager = _engine(folder).encode(seqs, task="embed")
    engine = _engine(folder, compile=True, cuda_graphs=True)
    packed = engine.encode(seqs, task="embed")
    alone = [engine.encode([s], task="embed")[0] for s in seqs]
    assert engine.core.runner.stats["compile"] is True and engine.core.runner.stats["cuda_graphs"] is True
    for p, a, e in zip(packed, alone, eager):
        assert rel_l2([p.data], [a.data]) <= TOL["packed_vs_alone_rel"]
        assert rel_l2([p.data], [e.data]) <= TOL["mode_vs_eager_rel"]
