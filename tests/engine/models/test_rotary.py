"""Rotary tables: a tabulated model computes exactly what the model's own rotary module does."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from rewardserve.engine.models.rotary import MAX_TABLE_POSITIONS, RotaryTable, tabulate_rotary
from test_decoders import BUILDERS
from tiny_decoders import SIZES, load, packed_hidden, random_inputs


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma2", "stablelm", "phi3", "olmo2"])
def test_tabulated_model_matches_computed_rotary(name, ckpt):
    BUILDERS[name]().save_pretrained(str(ckpt))
    model = load(ckpt, speed_ups=False)
    seqs = random_inputs(seed=3)
    want = packed_hidden(model, seqs)
    assert tabulate_rotary(model, 512, torch.float32) >= 1
    assert any(isinstance(m, RotaryTable) for m in model.modules())
    got = packed_hidden(model, seqs)
    assert (got - want).abs().max().item() <= 1e-6


def test_llama3_scaling_table_equals_module():
    cfg = tf.LlamaConfig(**SIZES, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    rotary = tf.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)
    table = RotaryTable(rotary, 512, torch.bfloat16)
    positions = torch.tensor([[0, 5, 63, 64, 300, 511]])
    x = torch.empty(1, dtype=torch.bfloat16)
    for got, want in zip(table(x, positions), rotary(x, positions)):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_dynamic_rope_and_huge_tables_are_left_alone():
    cfg = tf.LlamaConfig(**SIZES, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    model = tf.LlamaModel(cfg)
    assert tabulate_rotary(model, 512, torch.float32) == 0
    plain = tf.LlamaModel(tf.LlamaConfig(**SIZES))
    assert tabulate_rotary(plain, MAX_TABLE_POSITIONS + 1, torch.float32) == 0
    assert tabulate_rotary(plain, 512, torch.float32) == 1
    assert plain.rotary_emb.cos.shape == (512, SIZES["hidden_size"] // SIZES["num_attention_heads"])
