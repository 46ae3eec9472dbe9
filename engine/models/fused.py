"""One GEMM where transformers runs two or three: fused q/k/v and gate/up projections.

A 512-token request gives GEMMs of M = 512 rows. At that size a projection of a small model fills
a fraction of the GPU's SMs and costs a fixed few microseconds: Qwen3-0.6B runs 7 GEMMs per layer,
196 per forward. Concatenating the q, k and v weights (and gate and up) makes 4 per layer with
wider N, which also packs better into tiles for the 8B's shapes. The fused modules compute the
same products; only the kernel that computes them changes.

Applied to the Llama-family attention and MLP classes whose forward this file restates
(``FUSABLE_ATTENTION`` / ``FUSABLE_MLP``); any other class keeps transformers' own forward.
Gemma2 and Gemma3 are the same forward with a window on alternate layers, Gemma2's logit
soft-cap (``SOFTCAP``) and Gemma3's per-head q/k norms; their MLP is Llama's with GELU.
"""
from __future__ import annotations

import sys
import types

import torch
from torch import nn

from rewardserve.engine.attention import hf_attention_forward

# class name → where that class keeps its sliding window (None: full attention)
FUSABLE_ATTENTION = {
    "LlamaAttention": lambda m: None,
    "MistralAttention": lambda m: getattr(m.config, "sliding_window", None),
    "Qwen2Attention": lambda m: m.sliding_window,
    "Qwen3Attention": lambda m: m.sliding_window,
    "Gemma2Attention": lambda m: m.sliding_window,
    "Gemma3Attention": lambda m: m.sliding_window,
}
# class name → its attention logit soft-cap, as transformers passes it (Gemma3's forward passes
# none even when its config names one, so neither do we)
SOFTCAP = {"Gemma2Attention": lambda m: m.attn_logit_softcapping}
FUSABLE_MLP = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma2MLP", "Gemma3MLP")


def concat_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the parts' outputs side by side: weight [sum(out), in]."""
    has_bias = parts[0].bias is not None
    ref = parts[0].weight
    # Built on meta and given the concatenations: no initialised copy besides them at load time.
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=has_bias,
                      device="meta", dtype=ref.dtype)
    with torch.no_grad():
        fused.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=ref.requires_grad)
        if has_bias:
            fused.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=ref.requires_grad)
    return fused


def fused_attention_forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None,
                            **kwargs):
    """transformers' Llama-family attention with one qkv GEMM: hidden [1, T, hidden] → [1, T, hidden]."""
    input_shape = hidden_states.shape[:-1]
    q, k, v = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)  # [1, T, H*D], [1, T, Hkv*D] x 2
    q, k, v = (x.view(*input_shape, -1, self.head_dim) for x in (q, k, v))  # [1, T, heads, D]
    if hasattr(self, "q_norm"):  # Qwen3 and Gemma3 normalise each head before RoPE
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))                      # [1, heads, T, D]
    cos, sin = position_embeddings
    q, k = self.apply_rotary(q, k, cos, sin)
    out, _ = hf_attention_forward(self, q, k, v, None, scaling=self.scaling, sliding_window=self.window,
                                  softcap=self.softcap, **kwargs)
    return self.o_proj(out.reshape(*input_shape, -1)), None                # [1, T, hidden]


def fused_mlp_forward(self, x):
    """down(act(gate(x)) * up(x)) with gate and up in one GEMM: x [.., hidden] → [.., hidden]."""
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [.., I] each
    return self.down_proj(self.act_fn(gate) * up)


def _fuse_attention(module: nn.Module) -> None:
    parts = [module.q_proj, module.k_proj, module.v_proj]
    module.qkv_proj = concat_linear(parts)
    module.qkv_sizes = [p.out_features for p in parts]
    module.window = FUSABLE_ATTENTION[type(module).__name__](module)
    module.softcap = SOFTCAP.get(type(module).__name__, lambda m: None)(module)
    module.apply_rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb
    del module.q_proj, module.k_proj, module.v_proj
    module.forward = types.MethodType(fused_attention_forward, module)


def _fuse_mlp(module: nn.Module) -> None:
    module.gate_up_proj = concat_linear([module.gate_proj, module.up_proj])
    del module.gate_proj, module.up_proj
    module.forward = types.MethodType(fused_mlp_forward, module)


def fuse_projections(model: nn.Module) -> int:
    """Fuse every eligible attention and MLP module under ``model`` in place; returns how many."""
    count = 0
    # Only the attention and MLP modules are listed: a list of every module would keep each
    # replaced q/k/v/gate/up Linear alive until the loop ends (twice the projections' memory).
    targets = [m for m in model.modules() if type(m).__name__ in FUSABLE_ATTENTION or type(m).__name__ in FUSABLE_MLP]
    for module in targets:
        name = type(module).__name__
        if name in FUSABLE_ATTENTION and all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj")):
            _fuse_attention(module)
            count += 1
        elif name in FUSABLE_MLP and hasattr(module, "gate_proj"):
            _fuse_mlp(module)
            count += 1
    return count
