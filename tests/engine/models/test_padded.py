"""Padded fallback (engine/models/padded.py) on a tiny Jamba: Mamba + attention + MoE layers.

The checkpoint is a JambaForSequenceClassification in the hub layout with a real byte-level
BPE tokenizer, loaded through the registry. It runs on the CPU slow path (no mamba-ssm).
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from engine_testlib import pack_token_ids
from rewardserve.engine.config import ModelConfig
from rewardserve.engine.demo import build_tokenizer
from rewardserve.engine.models.padded import padded_groups
from rewardserve.engine.models.registry import LoadSpec, adapter_name, load_model
from rewardserve.engine.types import PoolingTask, PoolingType

LENGTHS = [1, 7, 300, 2, 129, 64, 255, 3, 33, 16]  # ≥ 8 mixed lengths


def jamba_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Layer 0: Mamba + MLP; layer 1: attention + 2-expert MoE (top-1). hidden 32."""
    build_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    config = transformers.JambaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
        mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8, use_mamba_kernels=False,
        max_position_embeddings=4096, num_labels=1, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, id2label={0: "reward"}, label2id={"reward": 0})
    config.architectures = ["JambaForSequenceClassification"]
    torch.manual_seed(seed)
    transformers.JambaForSequenceClassification(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def jamba(tmp_path_factory):
    """(folder, loaded adapter, transformers reference with eager attention, inputs)."""
    folder = jamba_checkpoint(tmp_path_factory.mktemp("jamba"))
    spec = LoadSpec(folder=folder, hf_config=AutoConfig.from_pretrained(str(folder)),
                    model_config=ModelConfig(model=str(folder)), dtype=torch.float32,
                    tokenizer=AutoTokenizer.from_pretrained(str(folder)))
    assert adapter_name(spec) == "padded"
    model = load_model(spec)
    hf = transformers.JambaForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    tok = spec.tokenizer
    rng = random.Random(0)
    ids = [i for i in range(len(tok)) if i != tok.pad_token_id]  # HF finds the last token by != pad
    seqs = [tok("The answer is 42. Step one: add the numbers.").input_ids]
    seqs += [[rng.choice(ids) for _ in range(n)] for n in LENGTHS]
    return folder, model, hf, seqs, tok.pad_token_id


def run_packed(model, seqs):
    batch = pack_token_ids(seqs)
    with torch.no_grad():
        hidden = model.forward_hidden(batch.input_ids, batch.positions, batch.meta())
    cu = batch.cu_seqlens.tolist()
    return [hidden[cu[i]:cu[i + 1]] for i in range(len(seqs))]


def hf_padded(hf, seqs, pad_id):
    """transformers' right-padded forward: (backbone last_hidden_state [B, L, H], logits [B, 1])."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        hidden = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = hf(input_ids=ids, attention_mask=mask).logits
    return hidden, logits


def test_traits(jamba):
    _, model, _, _, _ = jamba
    t = model.traits
    assert (t.architecture, t.is_causal, t.supports_packing, t.num_labels, t.labels, t.activation) == \
        ("JambaForSequenceClassification", True, False, 1, ("reward",), "sigmoid")
    assert t.default_pooling[PoolingTask.CLASSIFY] == PoolingType.LAST
    assert t.default_pooling[PoolingTask.TOKEN_CLASSIFY] == PoolingType.ALL
    assert model.head_modules() and PoolingTask.CLASSIFY in t.tasks()
    # Both kinds of Jamba layer are exercised: Mamba (+ MLP), then attention (+ 2-expert MoE).
    assert model.backbone.config.layers_block_type == ["mamba", "attention"]
    assert model.backbone.config.layers_num_experts == [1, 2]
    # The backbone keeps transformers' own attention, not the packed varlen hook.
    assert model.backbone.config._attn_implementation != "rewardserve_varlen"


def test_packed_equals_alone_and_transformers_padded(jamba):
    _, model, hf, seqs, pad_id = jamba
    pieces = run_packed(model, seqs)
    ref_hidden, ref_logits = hf_padded(hf, seqs, pad_id)
    for i, (seq, got) in enumerate(zip(seqs, pieces)):
        assert got.shape == (len(seq), 32)
        torch.testing.assert_close(got, run_packed(model, [seq])[0], atol=1e-5, rtol=0, msg=f"alone {i}")
        torch.testing.assert_close(got, ref_hidden[i, :len(seq)], atol=1e-4, rtol=0, msg=f"hf {i}")
    with torch.no_grad():
        logits = model.score(torch.stack([p[-1] for p in pieces]))  # LAST pooling
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)


def test_right_padding_is_exact_in_transformers_itself(jamba):
    """Why the fallback is allowed to pad: transformers' Jamba (Mamba slow path included) gives
    the same real-token states padded in a batch as each sequence run unpadded on its own."""
    _, _, hf, seqs, pad_id = jamba
    padded, _ = hf_padded(hf, seqs, pad_id)
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            alone = hf.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
        torch.testing.assert_close(padded[i, :len(seq)], alone, atol=1e-5, rtol=0)


def test_padded_groups_bound_padding():
    lengths = [1, 7, 300, 2, 129, 64, 255, 3, 33, 16]
    budget = sum(lengths)
    groups = padded_groups(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) > 1
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert lengths[g[0]] == longest and (len(g) * longest <= budget or len(g) == 1)
    assert padded_groups([5000, 1], 100) == [[0], [1]]  # a long sequence is never split
