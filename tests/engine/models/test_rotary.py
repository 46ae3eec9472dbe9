"""Rotary tables: a tabulated model computes exactly what the model's own rotary module does."""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from rewardserve.engine.models.rotary import (MAX_TABLE_POSITIONS, RotaryTable, SequenceRotary, sequence_lengths,
                                              tabulate_rotary)
from test_decoders import BUILDERS
from tiny_decoders import SIZES, check_packed_vs_solo, last_rows, load, packed_hidden, random_inputs


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


def _fresh_rotary(cfg):
    return tf.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)  # its state starts clean


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "longrope", "short_factor": [1.0 + i / 10 for i in range(4)],
     "long_factor": [2.0 + i for i in range(4)], "original_max_position_embeddings": 16},
], ids=["dynamic", "longrope"])
def test_length_dependent_rope_follows_each_packed_sequence_alone(rope_scaling):
    # 32 positions (16 original for longrope); sequences shorter and longer than that, packed.
    cfg = tf.LlamaConfig(**{**SIZES, "max_position_embeddings": 32}, rope_scaling=rope_scaling)
    packed = SequenceRotary(_fresh_rotary(cfg))
    lengths = [5, 60, 32, 33, 1, 17]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]                  # [1, T]
    x = torch.empty(1)
    cos, sin = packed(x, positions)
    start = 0
    for n in lengths:
        want_cos, want_sin = _fresh_rotary(cfg)(x, torch.arange(n)[None])          # alone, fresh model
        assert torch.allclose(cos[:, start:start + n], want_cos, rtol=1e-5, atol=1e-6), n
        assert torch.allclose(sin[:, start:start + n], want_sin, rtol=1e-5, atol=1e-6), n
        start += n
    # transformers itself scales the whole packed batch by its longest sequence:
    hf_cos, _ = _fresh_rotary(cfg)(x, positions)
    assert not torch.allclose(hf_cos[:, :5], cos[:, :5], atol=1e-4)


def test_sequence_lengths_of_packed_positions():
    positions = torch.tensor([0, 1, 2, 0, 0, 1, 0, 0])  # 3, 1, 2, then graph padding (1 each)
    assert sequence_lengths(positions).tolist() == [3, 3, 3, 1, 2, 2, 1, 1]


def test_dynamic_rope_model_is_packing_exact_past_its_trained_length(ckpt):
    cfg = tf.LlamaConfig(**{**SIZES, "max_position_embeddings": 16}, num_labels=1,
                         rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    tf.LlamaForSequenceClassification(cfg).save_pretrained(str(ckpt))
    model, raw = load(ckpt), load(ckpt, speed_ups=False)
    assert any(isinstance(m, SequenceRotary) for m in model.modules())
    seqs = [list(range(1, 1 + n)) for n in (40, 7, 16, 17, 3, 64)]
    with torch.no_grad():
        scores = check_packed_vs_solo(model, seqs, last_rows(seqs))
        # transformers alone, shortest first: its cached scale then always fits the sequence
        for i in sorted(range(len(seqs)), key=lambda i: len(seqs[i])):
            want = raw.score(packed_hidden(raw, [seqs[i]])[-1:])
            assert (scores[i] - want[0]).abs().max().item() <= 1e-5, len(seqs[i])


def test_rotary_modules_of_other_layouts_keep_their_own_code():
    from transformers.models.cohere.modeling_cohere import CohereRotaryEmbedding
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2RotaryEmbedding

    from rewardserve.engine.models.rotary import per_sequence_rotary

    holder = nn.Module()  # Cohere interleaves cos/sin: the per-sequence module's layout differs
    holder.rotary = CohereRotaryEmbedding(tf.CohereConfig(**{**SIZES, "max_position_embeddings": 16},
                                                          rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert per_sequence_rotary(holder) == 0 and isinstance(holder.rotary, CohereRotaryEmbedding)
    holder.rotary = _fresh_rotary(tf.LlamaConfig(**{**SIZES, "max_position_embeddings": 16},
                                                  rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert per_sequence_rotary(holder) == 1 and isinstance(holder.rotary, SequenceRotary)
    # DeepSeek-V2 returns complex frequencies, not a (cos, sin) pair: no table
    holder.rotary = DeepseekV2RotaryEmbedding(tf.DeepseekV2Config(**SIZES, qk_rope_head_dim=8))
    assert tabulate_rotary(holder, 64, torch.float32) == 0
