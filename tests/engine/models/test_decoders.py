"""Decoder *ForSequenceClassification adapters: packed == alone == transformers' padded forward.

Each case saves a tiny transformers model in the hub layout, loads it through the registry
(proving dispatch to seq_cls), runs ≥ 8 mixed-length inputs packed, and compares
  - every hidden row and the LAST-pooled scores with each input run alone (≤ 1e-5),
  - the scores with transformers' own right-padded eager forward of the HF class (≤ 1e-4).
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from rewardserve.engine.models.base import default_activation
from rewardserve.engine.types import PoolingTask, PoolingType
from tiny_decoders import SIZES, assert_close, check_packed_vs_solo, last_rows, load, padded, random_inputs


def _llama():
    return tf.LlamaForSequenceClassification(tf.LlamaConfig(**SIZES, num_labels=1))


def _qwen2():
    # Layer 0 full attention, layer 1 sliding window 16.
    cfg = tf.Qwen2Config(**SIZES, num_labels=2, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    return tf.Qwen2ForSequenceClassification(cfg)


def _qwen3():
    cfg = tf.Qwen3Config(**SIZES, head_dim=16, num_labels=3, id2label={0: "bad", 1: "ok", 2: "good"},
                         label2id={"bad": 0, "ok": 1, "good": 2})
    return tf.Qwen3ForSequenceClassification(cfg)


def _mistral():
    cfg = tf.MistralConfig(**SIZES, sliding_window=16, num_labels=1, problem_type="regression")
    return tf.MistralForSequenceClassification(cfg)


def _gemma2():
    # Sliding window on even layers, strong attention soft-capping so it changes the result;
    # final_logit_softcapping is set but must NOT touch the seq-cls score (as in transformers).
    cfg = tf.Gemma2Config(**SIZES, head_dim=16, sliding_window=16, attn_logit_softcapping=2.0,
                          final_logit_softcapping=0.5, query_pre_attn_scalar=16, num_labels=1)
    return tf.Gemma2ForSequenceClassification(cfg)


def _gemma3():
    # Gemma3's text classifier: window on layer 0, full attention on layer 1, per-head q/k norms,
    # a rotary module per layer type; no attention soft-capping in its forward.
    cfg = tf.Gemma3TextConfig(**SIZES, head_dim=16, sliding_window=16, query_pre_attn_scalar=16, num_labels=1,
                              layer_types=["sliding_attention", "full_attention"])
    return tf.Gemma3TextForSequenceClassification(cfg)


def _stablelm():
    # Its decoder layers drop **kwargs before attention: packing must still reach the hook.
    cfg = tf.StableLmConfig(**SIZES, partial_rotary_factor=0.5, num_labels=1)
    return tf.StableLmForSequenceClassification(cfg)


def _phi3():
    return tf.Phi3ForSequenceClassification(tf.Phi3Config(**SIZES, num_labels=2))


def _olmo2():
    return tf.Olmo2ForSequenceClassification(tf.Olmo2Config(**SIZES, num_labels=1))


# Skywork-Reward families first; then "any other *ForSequenceClassification decoder".
BUILDERS = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "gemma2": _gemma2,
            "gemma3": _gemma3, "stablelm": _stablelm, "phi3": _phi3, "olmo2": _olmo2}


@torch.no_grad()
def _reference(folder, seqs) -> torch.Tensor:
    """transformers' own padded forward: right padding, pad_token_id set, eager attention."""
    ref = tf.AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    ids, mask = padded(seqs)
    return ref(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_seq_cls_packed_matches_alone_and_transformers(name, ckpt):
    hf = BUILDERS[name]()
    # Llama is saved sharded (model.safetensors.index.json + 2+ files), as big hub repos are.
    hf.save_pretrained(str(ckpt), max_shard_size="40KB" if name == "llama" else "50GB")
    assert (ckpt / ("model.safetensors.index.json" if name == "llama" else "model.safetensors")).exists()
    model = load(ckpt)
    seqs = random_inputs(seed=1)

    scores = check_packed_vs_solo(model, seqs, last_rows(seqs))
    assert_close(scores, _reference(ckpt, seqs))

    cfg = hf.config
    t = model.traits
    assert t.architecture == type(hf).__name__
    assert (t.num_labels, t.hidden_size, t.vocab_size) == (cfg.num_labels, 32, 400)
    assert t.max_position_embeddings == 512
    assert t.labels == tuple(cfg.id2label[i] for i in range(cfg.num_labels))
    assert t.activation == default_activation(cfg.num_labels, cfg.problem_type)
    assert t.default_pooling[PoolingTask.CLASSIFY] == PoolingType.LAST
    assert PoolingTask.CLASSIFY in t.tasks()


def test_seq_cls_activation_defaults(ckpt):
    """One label → sigmoid, several → softmax, regression → identity (DESIGN.md)."""
    assert default_activation(1, None) == "sigmoid"
    assert default_activation(3, None) == "softmax"
    assert default_activation(1, "regression") == "identity"
    _mistral().save_pretrained(str(ckpt))
    assert load(ckpt).traits.activation == "identity"


def test_gemma2_seq_cls_ignores_final_logit_softcapping(ckpt):
    """The score is the raw Linear of the last hidden state: |logit| may exceed the cap."""
    hf = _gemma2()
    hf.config.final_logit_softcapping = 0.05
    hf.save_pretrained(str(ckpt))
    model = load(ckpt)
    seqs = random_inputs(seed=2, lengths=(5, 40, 77))
    scores = check_packed_vs_solo(model, seqs, last_rows(seqs))
    assert scores.abs().max() > 0.05
    assert_close(scores, _reference(ckpt, seqs))


def test_bf16_load_keeps_dtype(ckpt):
    """spec.dtype is honoured: backbone and head come back in bfloat16 on the CPU."""
    from rewardserve.engine.config import ModelConfig
    from rewardserve.engine.models.registry import LoadSpec, load_model
    from rewardserve.engine.models.weights import read_hf_config

    _llama().save_pretrained(str(ckpt))
    spec = LoadSpec(ckpt, read_hf_config(ckpt), ModelConfig(model=str(ckpt)), torch.bfloat16, None)
    model = load_model(spec)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.head_modules() and model.head_modules()[0].weight.dtype == torch.bfloat16
