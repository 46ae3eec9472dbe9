"""Rotary embeddings as a table lookup instead of cos/sin computed on every forward.

transformers computes cos/sin of ``positions × inv_freq`` in float32 on each call. Under
torch.compile inductor fuses that computation into every layer's q/k-norm + RoPE kernel, so each
of the 28 (or 32) layers evaluates cos and sin again for every element: on an H100 those kernels
took 16% of a 0.6B model's GPU time. A table of the same values, built once by the model's own
rotary module for every position the engine accepts, turns that into a gather.

Only position-independent RoPE types are tabulated (default, linear, llama3, yarn). "dynamic" and
"longrope" change their frequencies with the sequence's length: transformers takes that length
from the whole batch (the largest position id, and for "dynamic" the longest batch seen so far),
which in a packed batch would let one long sequence change every other sequence's scores.
``SequenceRotary`` computes them per packed sequence instead, as each sequence run alone on a
fresh model.
"""
from __future__ import annotations

import copy
import inspect
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
LENGTH_ROPE_TYPES = ("dynamic", "longrope")
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


class SequenceRotary(nn.Module):
    """Drop-in for a "dynamic" or "longrope" rotary module on packed positions [1, T]: every
    sequence (positions counting up from 0) gets the frequencies of its own length."""

    def __init__(self, original: nn.Module):
        super().__init__()
        config, self.rope_type = original.config, original.rope_type
        params = _rope_parameters(config)
        self.scaling = float(getattr(original, "attention_scaling", 1.0))
        short = original.original_inv_freq.float()                                         # [D/2]
        self.dim = 2 * short.numel()
        if self.rope_type == "dynamic":
            self.base, self.factor = float(params["rope_theta"]), float(params["factor"])
            self.max_positions = int(config.max_position_embeddings)
            exponent = torch.arange(0, self.dim, 2, dtype=torch.int64, device=short.device).float() / self.dim
            self.register_buffer("exponent", exponent, persistent=False)                  # [D/2]
        else:  # longrope: the short factors up to the original length, the long ones beyond
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            self.max_positions = int(params["original_max_position_embeddings"])
            long, _ = ROPE_INIT_FUNCTIONS["longrope"](config, short.device, seq_len=self.max_positions + 1)
            self.register_buffer("short", short, persistent=False)
            self.register_buffer("long", long.float(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = position_ids.reshape(-1)                                               # [T]
        inv_freq = self.frequencies(sequence_lengths(positions))                           # [T, D/2]
        freqs = positions[:, None].float() * inv_freq                                      # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1).reshape(*position_ids.shape, self.dim)     # [B, T, D]
        return (emb.cos() * self.scaling).to(x.dtype), (emb.sin() * self.scaling).to(x.dtype)

    def frequencies(self, lengths: torch.Tensor) -> torch.Tensor:
        """Sequence length per token [T] → inverse frequencies per token [T, D/2]."""
        if self.rope_type == "longrope":
            return torch.where((lengths > self.max_positions)[:, None], self.long[None], self.short[None])
        # transformers' dynamic NTK base for a sequence of `length` (float32, as its tensor path)
        length = lengths.clamp(min=self.max_positions)
        ratio = self.factor * length / self.max_positions - (self.factor - 1)
        base = self.base * ratio.float() ** (self.dim / (self.dim - 2))                    # [T]
        return 1.0 / base[:, None] ** self.exponent[None]


def sequence_lengths(positions: torch.Tensor) -> torch.Tensor:
    """Packed positions [T] (each sequence counts up from 0) → the length of each token's sequence
    [T], without a host sync (CUDA graphs and torch.compile keep it on the device)."""
    segment = (torch.cumsum((positions == 0).long(), 0) - 1).clamp(min=0)                 # [T]
    last = torch.zeros_like(positions).scatter_reduce(0, segment, positions, "amax", include_self=False)
    return last[segment] + 1


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    return {**(getattr(config, "rope_scaling", None) or {}), **params,
            "rope_theta": params.get("rope_theta", getattr(config, "rope_theta", 10000.0))}


def _takes_x_and_positions(module: nn.Module) -> bool:
    params = list(inspect.signature(module.forward).parameters)
    return params == ["x", "position_ids"]  # e.g. Gemma3's per-layer-type rotary takes more


def _is_tabulable(module: nn.Module) -> bool:
    if getattr(module, "rope_type", None) not in STATIC_ROPE_TYPES or not hasattr(module, "inv_freq"):
        return False
    return _takes_x_and_positions(module)


def _is_length_dependent(module: nn.Module) -> bool:
    return (getattr(module, "rope_type", None) in LENGTH_ROPE_TYPES and hasattr(module, "original_inv_freq")
            and hasattr(module, "config") and _takes_x_and_positions(module))


def per_sequence_rotary(model: nn.Module) -> int:
    """Replace every "dynamic" / "longrope" rotary module under ``model`` by ``SequenceRotary``,
    where it reproduces the module on single sequences (other layouts keep their module).

    Returns how many were replaced.
    """
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _is_length_dependent(child)]
    replaced = 0
    with torch.no_grad():
        for parent, name, child in targets:
            candidate = _sequence_rotary(child)
            if candidate is None:
                log.warning("%s keeps transformers' batch-wide RoPE scaling: packed scores may depend on "
                            "the longest sequence in the batch", type(child).__name__)
                continue
            setattr(parent, name, candidate)
            replaced += 1
    return replaced


def _sequence_rotary(original: nn.Module) -> SequenceRotary | None:
    """A SequenceRotary for ``original`` if it gives the same cos/sin as a fresh copy of it for one
    sequence below and one above the length where the scaling changes; else None (e.g. Cohere's
    interleaved layout, Phimoe's per-length attention scale)."""
    try:
        candidate = SequenceRotary(original)
        x = torch.empty(1, device=original.original_inv_freq.device)
        for length in (5, candidate.max_positions + 3):
            positions = torch.arange(length, device=x.device)[None]                          # [1, L]
            want, got = copy.deepcopy(original)(x, positions), candidate(x, positions)
            if not (isinstance(want, tuple) and len(want) == 2 and all(
                    w.shape == g.shape and torch.allclose(g, w, rtol=1e-5, atol=1e-5) for g, w in zip(got, want))):
                return None
    except Exception:  # noqa: BLE001 - an unexpected rotary class: keep its own module
        return None
    return candidate


def tabulate_rotary(model: nn.Module, num_positions: int, dtype: torch.dtype) -> int:
    """Replace every static rotary module under ``model`` by a table of ``num_positions`` rows.

    Returns how many were replaced (0 when the model has none or too many positions).
    """
    if num_positions <= 0 or num_positions > MAX_TABLE_POSITIONS:
        return 0
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _is_tabulable(child)]
    replaced = 0
    with torch.no_grad():
        for parent, name, child in targets:
            try:
                table = RotaryTable(child, num_positions, dtype)
            except (TypeError, ValueError):  # not a (cos, sin) pair, e.g. complex freqs_cis: keep it
                continue
            setattr(parent, name, table)
            replaced += 1
    if replaced:
        log.debug("rotary embeddings tabulated for %d positions (%d modules)", num_positions, replaced)
    return replaced
