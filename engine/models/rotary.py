"""Rotary embeddings as a table lookup instead of cos/sin computed on every forward.

transformers computes cos/sin of ``positions × inv_freq`` in float32 on each call. Under
torch.compile inductor fuses that computation into every layer's q/k-norm + RoPE kernel, so each
of the 28 (or 32) layers evaluates cos and sin again for every element: on an H100 those kernels
took 16% of a 0.6B model's GPU time. A table of the same values, built once by the model's own
rotary module for every position the engine accepts, turns that into a gather.

Only position-independent RoPE types are tabulated (default, linear, llama3, yarn); "dynamic" and
"longrope" change their frequencies with the batch's length and keep the original module.
"""
from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
MAX_TABLE_POSITIONS = 131072  # [L, D] bf16 cos + sin: 64 MiB at D = 128


class RotaryTable(nn.Module):
    """Drop-in for a transformers rotary module: (x, position_ids [B, T]) → cos, sin [B, T, D]."""

    def __init__(self, original: nn.Module, num_positions: int, dtype: torch.dtype):
        super().__init__()
        positions = torch.arange(num_positions, device=original.inv_freq.device)[None]   # [1, L]
        probe = torch.empty(1, device=positions.device, dtype=dtype)
        cos, sin = original(probe, positions)                                              # [1, L, D]
        self.register_buffer("cos", cos[0].contiguous(), persistent=False)                 # [L, D]
        self.register_buffer("sin", sin[0].contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[position_ids].to(x.dtype), self.sin[position_ids].to(x.dtype)  # [B, T, D]


def _is_tabulable(module: nn.Module) -> bool:
    if getattr(module, "rope_type", None) not in STATIC_ROPE_TYPES or not hasattr(module, "inv_freq"):
        return False
    params = list(inspect.signature(module.forward).parameters)
    return params == ["x", "position_ids"]  # e.g. Gemma3's per-layer-type rotary takes more


def tabulate_rotary(model: nn.Module, num_positions: int, dtype: torch.dtype) -> int:
    """Replace every static rotary module under ``model`` by a table of ``num_positions`` rows.

    Returns how many were replaced (0 when the model has none or too many positions).
    """
    if num_positions <= 0 or num_positions > MAX_TABLE_POSITIONS:
        return 0
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _is_tabulable(child)]
    with torch.no_grad():
        for parent, name, child in targets:
            setattr(parent, name, RotaryTable(child, num_positions, dtype))
    if targets:
        log.debug("rotary embeddings tabulated for %d positions (%d modules)", num_positions, len(targets))
    return len(targets)
