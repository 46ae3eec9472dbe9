"""Custom reward heads on hub layouts that transformers has no class for.

- Qwen2ForRewardModel / Qwen2ForProcessRewardModel (Qwen2.5-Math-RM / -PRM): checkpoint written
  as the hub has it (``model.*`` + ``score.0`` / ``score.2`` with biases, auto_map to remote code
  that does not exist here); reference = transformers' Qwen2Model padded + the MLP by hand.
- InternLM2ForRewardModel: sharded checkpoint with fused ``wqkv``; reference = an independent
  forward written below from the raw tensors (RMSNorm, RoPE, GQA, SwiGLU), no transformers.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.weights import load_state_dict, read_hf_config
from rewardserve.engine.types import PoolingTask, PoolingType
from tiny_decoders import (SIZES, STEP_TAG_ID, VOCAB, assert_close, check_packed_vs_solo, last_rows, load,
                           padded, random_inputs, save_tensors, step_rows, unpad, write_config)

QWEN_RM_MAP = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
               "AutoModel": "modeling_qwen2_rm.Qwen2ForRewardModel"}


def _qwen2_rm_checkpoint(folder, arch: str, num_labels: int) -> dict[str, torch.Tensor]:
    """Hub layout of Qwen2.5-Math-(P)RM: qwen2 config + remote-code auto_map, backbone + MLP head."""
    cfg = tf.Qwen2Config(**SIZES)
    state = {f"model.{k}": v for k, v in tf.Qwen2Model(cfg).state_dict().items()}
    h = cfg.hidden_size
    state |= {"score.0.weight": torch.randn(h, h) * 0.3, "score.0.bias": torch.randn(h) * 0.3,
              "score.2.weight": torch.randn(num_labels, h) * 0.3, "score.2.bias": torch.randn(num_labels) * 0.3}
    save_tensors(folder, state)
    config = cfg.to_dict() | {"architectures": [arch], "model_type": "qwen2", "torch_dtype": "bfloat16",
                              "auto_map": QWEN_RM_MAP}
    write_config(folder, config)
    return state


@torch.no_grad()
def _qwen2_reference(folder, state, seqs) -> torch.Tensor:
    """Padded transformers Qwen2Model + MLP by hand → per-token logits, packed [T, L]."""
    cfg = tf.Qwen2Config.from_pretrained(str(folder))
    cfg._attn_implementation = "eager"
    backbone = tf.Qwen2Model(cfg)
    backbone.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    ids, mask = padded(seqs)
    hidden = backbone.eval()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, S, H]
    mid = F.relu(hidden @ state["score.0.weight"].T + state["score.0.bias"])
    return unpad(mid @ state["score.2.weight"].T + state["score.2.bias"], seqs)    # [T, L]


def test_qwen2_reward_model(ckpt):
    state = _qwen2_rm_checkpoint(ckpt, "Qwen2ForRewardModel", 1)
    assert type(read_hf_config(ckpt)).__name__ == "Qwen2Config"  # auto_map ignored, no remote code
    model = load(ckpt)
    seqs = random_inputs(seed=3)
    rows = last_rows(seqs)
    scores = check_packed_vs_solo(model, seqs, rows)              # [N, 1]
    assert_close(scores, _qwen2_reference(ckpt, state, seqs)[rows])
    t = model.traits
    assert (t.num_labels, t.activation, t.labels) == (1, "identity", ("reward",))
    assert t.default_pooling[PoolingTask.CLASSIFY] == PoolingType.LAST


def test_qwen2_process_reward_model_step_scores(ckpt):
    state = _qwen2_rm_checkpoint(ckpt, "Qwen2ForProcessRewardModel", 2)
    model = load(ckpt)
    t = model.traits
    assert t.step_tag_id == STEP_TAG_ID  # the tokenizer's "<extra_0>"
    assert (t.num_labels, t.activation) == (2, "softmax")
    assert t.default_pooling[PoolingTask.TOKEN_CLASSIFY] == PoolingType.STEP

    seqs = random_inputs(seed=4, step_every=13)
    rows = step_rows(seqs, STEP_TAG_ID)
    assert len(rows) >= len(seqs)
    logits = check_packed_vs_solo(model, seqs, rows)              # [num_steps, 2]
    want = _qwen2_reference(ckpt, state, seqs)[rows]
    assert_close(logits, want)
    assert_close(logits.softmax(-1)[:, 1], want.softmax(-1)[:, 1])  # P(step is right)


def test_qwen2_prm_without_extra_0_has_no_default_step_tag(ckpt):
    """No "<extra_0>" in the tokenizer: no default step tag (pooling then needs one per request)."""
    from rewardserve.engine.demo import build_tokenizer

    _qwen2_rm_checkpoint(ckpt, "Qwen2ForProcessRewardModel", 2)
    build_tokenizer(ckpt, specials=("<|endoftext|>",))
    assert load(ckpt).traits.step_tag_id is None


# ---- InternLM2 -------------------------------------------------------------------------

IL_CFG = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, vocab_size=VOCAB)


def _internlm2_checkpoint(folder) -> dict[str, torch.Tensor]:
    """internlm2-1_8b-reward layout (fused wqkv grouped per kv head, v_head), in 3 shards."""
    h, f, layers = IL_CFG["hidden_size"], IL_CFG["intermediate_size"], IL_CFG["num_hidden_layers"]
    d = h // IL_CFG["num_attention_heads"]
    kv, groups = IL_CFG["num_key_value_heads"], IL_CFG["num_attention_heads"] // IL_CFG["num_key_value_heads"]
    rnd = lambda *shape: torch.randn(*shape) * 0.15  # noqa: E731
    state = {"model.tok_embeddings.weight": rnd(VOCAB, h) * 5, "model.norm.weight": 1 + rnd(h),
             "v_head.weight": rnd(1, h), "output.weight": rnd(VOCAB, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state |= {p + "attention.wqkv.weight": rnd(kv * (groups + 2) * d, h), p + "attention.wo.weight": rnd(h, h),
                  p + "feed_forward.w1.weight": rnd(f, h), p + "feed_forward.w3.weight": rnd(f, h),
                  p + "feed_forward.w2.weight": rnd(h, f), p + "attention_norm.weight": 1 + rnd(h),
                  p + "ffn_norm.weight": 1 + rnd(h)}
    save_tensors(folder, state, shards=3)
    write_config(folder, IL_CFG | {
        "architectures": ["InternLM2ForRewardModel"], "model_type": "internlm2", "torch_dtype": "float16",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForRewardModel"},
        "bias": False, "hidden_act": "silu", "max_position_embeddings": 32768, "rope_scaling": None,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "reward_token_id": 92527,
        "tie_word_embeddings": False, "attn_implementation": "eager"})
    return state


def _rms(x, w, eps=IL_CFG["rms_norm_eps"]):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, theta=IL_CFG["rope_theta"]):
    """x [T, heads, D], positions 0..T-1, rotate-half (GPT-NeoX) layout."""
    t, _, d = x.shape
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)       # [D/2]
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]             # [T, D/2]
    cos, sin = (torch.cat([a, a], -1)[:, None].float() for a in (ang.cos(), ang.sin()))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@torch.no_grad()
def _internlm2_reference(state, ids: list[int]) -> torch.Tensor:
    """Independent InternLM2 forward of one sequence from the raw fused weights → reward [1]."""
    h, heads, kv = IL_CFG["hidden_size"], IL_CFG["num_attention_heads"], IL_CFG["num_key_value_heads"]
    d, groups, t = h // heads, heads // kv, len(ids)
    x = state["model.tok_embeddings.weight"][torch.tensor(ids)]                 # [T, H]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(IL_CFG["num_hidden_layers"]):
        w = lambda n: state[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        qkv = (_rms(x, w("attention_norm")) @ w("attention.wqkv").T).view(t, kv, groups + 2, d)
        q = _rope(qkv[:, :, :groups].reshape(t, heads, d))                       # head j → kv head j // groups
        k = _rope(qkv[:, :, groups]).repeat_interleave(groups, 1)                # [T, heads, D]
        v = qkv[:, :, groups + 1].repeat_interleave(groups, 1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(t, h) @ w("attention.wo").T
        y = _rms(x, w("ffn_norm"))
        x = x + (F.silu(y @ w("feed_forward.w1").T) * (y @ w("feed_forward.w3").T)) @ w("feed_forward.w2").T
    return _rms(x, state["model.norm.weight"])[-1] @ state["v_head.weight"].T


def test_internlm2_reward_model_matches_independent_forward(ckpt):
    state = _internlm2_checkpoint(ckpt)
    assert (ckpt / "model.safetensors.index.json").exists() and not (ckpt / "model.safetensors").exists()
    assert load_state_dict(ckpt).keys() == state.keys()
    cfg = read_hf_config(ckpt)  # AutoConfig cannot parse internlm2 without remote code
    assert type(cfg) is tf.PretrainedConfig and cfg.model_type == "internlm2" and cfg.bias is False
    model = load(ckpt)
    seqs = random_inputs(seed=5)
    scores = check_packed_vs_solo(model, seqs, last_rows(seqs))   # [N, 1]
    want = torch.stack([_internlm2_reference(state, s) for s in seqs])
    assert_close(scores, want)
    t = model.traits
    assert (t.architecture, t.num_labels, t.activation) == ("InternLM2ForRewardModel", 1, "identity")
    assert (t.hidden_size, t.vocab_size, t.max_position_embeddings) == (64, VOCAB, 32768)


def test_missing_weights_is_a_clear_error(ckpt):
    with pytest.raises(EngineError, match="model.safetensors"):
        load_state_dict(ckpt)
    state = _internlm2_checkpoint(ckpt)
    state.pop("v_head.weight")
    (ckpt / "model.safetensors.index.json").unlink()
    save_tensors(ckpt, state)
    with pytest.raises(EngineError, match="v_head"):
        load(ckpt)
