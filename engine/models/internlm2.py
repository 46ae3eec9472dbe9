"""``InternLM2ForRewardModel`` (internlm/internlm2-*-reward) on a transformers Llama backbone.

InternLM2 is Llama with renamed and fused weights; nothing of its remote code is needed:

    model.tok_embeddings.weight             → embed_tokens.weight
    model.layers.i.attention.wqkv.weight    → self_attn.{q,k,v}_proj.weight (split below)
    model.layers.i.attention.wo.weight      → self_attn.o_proj.weight
    model.layers.i.feed_forward.w1/w3/w2    → mlp.gate_proj / up_proj / down_proj
    model.layers.i.attention_norm / ffn_norm → input_layernorm / post_attention_layernorm
    model.norm.weight                       → norm.weight
    v_head.weight [1, hidden]               → the head: one raw reward at the LAST token

``wqkv`` is [(kv_heads * (groups + 2)) * head_dim, hidden], grouped per kv head: ``groups``
query heads, then that group's key head, then its value head. Query head ``g`` of kv head ``h``
becomes query head ``h * groups + g``, which is the kv head Llama's GQA pairs it with.

The hub's ``get_score`` appends ``config.reward_token_id`` to the rendered conversation: the
traits carry it as ``append_token_id`` and prepare appends it to text and chat inputs (token id
inputs are scored as given).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import PoolingModel
from rewardserve.engine.models.registry import LoadSpec
from rewardserve.engine.models.seq_cls import PackedDecoder, decoder_traits
from rewardserve.engine.models.weights import build_with_weights, load_state_dict

_RENAMES = {
    "attention.wo.": "self_attn.o_proj.",
    "feed_forward.w1.": "mlp.gate_proj.",
    "feed_forward.w3.": "mlp.up_proj.",
    "feed_forward.w2.": "mlp.down_proj.",
    "attention_norm.": "input_layernorm.",
    "ffn_norm.": "post_attention_layernorm.",
}


def llama_config(hf: Any):
    """A LlamaConfig with InternLM2's sizes (``hf`` is a plain PretrainedConfig of config.json)."""
    from transformers import LlamaConfig

    heads = int(hf.num_attention_heads)
    scaling = getattr(hf, "rope_scaling", None)
    if scaling and "type" in scaling and "rope_type" not in scaling:  # InternLM2 spells it "type"
        scaling = {("rope_type" if k == "type" else k): v for k, v in scaling.items()}
    config = LlamaConfig(
        vocab_size=int(hf.vocab_size), hidden_size=int(hf.hidden_size),
        intermediate_size=int(hf.intermediate_size), num_hidden_layers=int(hf.num_hidden_layers),
        num_attention_heads=heads, num_key_value_heads=int(getattr(hf, "num_key_value_heads", None) or heads),
        max_position_embeddings=int(getattr(hf, "max_position_embeddings", 2048)),
        rms_norm_eps=float(getattr(hf, "rms_norm_eps", 1e-6)), rope_theta=float(getattr(hf, "rope_theta", 10000.0)),
        rope_scaling=scaling, attention_bias=bool(getattr(hf, "bias", False)), mlp_bias=False,
        hidden_act=getattr(hf, "hidden_act", "silu"), tie_word_embeddings=False)
    config._attn_implementation = "sdpa"  # switched to varlen by PackedDecoder
    return config


def split_wqkv(wqkv: torch.Tensor, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Fused [(kv_heads * (groups + 2)) * head_dim, hidden] → q [heads*D, hidden], k, v [kv_heads*D, hidden]."""
    hidden = wqkv.shape[-1]
    grouped = wqkv.reshape(kv_heads, -1, head_dim, hidden)  # [kv_heads, groups + 2, D, hidden]
    q = grouped[:, :-2].reshape(-1, hidden)
    k = grouped[:, -2].reshape(-1, hidden)
    v = grouped[:, -1].reshape(-1, hidden)
    return q, k, v


def llama_state(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """InternLM2 ``model.*`` tensor names and fused qkv → LlamaModel state dict."""
    head_dim = config.hidden_size // config.num_attention_heads
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not name.startswith("model.") or name.endswith("rotary_emb.inv_freq"):
            continue  # v_head / output are not backbone weights
        name = name[len("model."):].replace("tok_embeddings.", "embed_tokens.")
        if ".attention.wqkv." in name:
            prefix, kind = name.split(".attention.wqkv.")
            if kind == "bias":
                tensor = tensor[:, None]  # [rows] → [rows, 1] so the split reshapes it the same way
            parts = split_wqkv(tensor, config.num_key_value_heads, head_dim)
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[f"{prefix}.self_attn.{proj}.{kind}"] = part[:, 0] if kind == "bias" else part
            continue
        for old, new in _RENAMES.items():
            name = name.replace(old, new)
        out[name] = tensor
    return out


def load(spec: LoadSpec) -> PoolingModel:
    """Map the checkpoint onto ``LlamaModel`` and keep ``v_head`` as a Linear(hidden, 1) head."""
    from transformers import LlamaModel

    state = load_state_dict(spec.folder)
    if "v_head.weight" not in state:
        raise EngineError(f"{spec.folder}: InternLM2ForRewardModel checkpoint has no v_head.weight")
    config = llama_config(spec.hf_config)
    backbone = build_with_weights(LlamaModel, config, llama_state(state, config), spec.dtype)
    v_head = state["v_head.weight"]  # [1, hidden]
    head = nn.Linear(v_head.shape[1], v_head.shape[0], bias="v_head.bias" in state)
    head.weight.data = v_head.to(spec.dtype)
    if head.bias is not None:
        head.bias.data = state["v_head.bias"].to(spec.dtype)
    reward_token = getattr(spec.hf_config, "reward_token_id", None)
    traits = decoder_traits(spec, num_labels=v_head.shape[0], activation="identity",
                            labels=("reward",) if v_head.shape[0] == 1 else None,
                            append_token_id=int(reward_token) if reward_token is not None else None)
    return PackedDecoder(backbone, head, traits)
