"""Variable-length attention over packed sequences, plugged into transformers models.

Packed layout: the batch is one row of ``total_tokens`` tokens; ``cu_seqlens`` ([num_seqs + 1],
int32) marks where each sequence starts. Backends, best first: the ``flash_attn`` package, our
Triton kernel (``triton_attention``, CUDA), PyTorch's bundled FlashAttention kernel (CUDA), SDPA
with a block-diagonal (and sliding-window) mask (CPU, or any case a kernel cannot take, such as
Gemma2's logit soft-capping on torch's kernel; flash_attn and our Triton kernel soft-cap).

Shared prefixes (``engine/prefix.py``): ``VarlenMeta.prefix`` gives each sequence a second key
range in the same packed K/V, the prefix segment it continues; its queries sit at absolute
positions prefix_len + i and see every prefix key (within the window). Our Triton kernel and the
SDPA loop take it; flash_attn and torch's kernel do not (``prefix.refusal`` keeps reuse off there).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rewardserve.engine import triton_attention

if TYPE_CHECKING:
    from rewardserve.engine.prefix_cache import CacheTensors

ATTN_IMPLEMENTATION = "rewardserve_varlen"
CONTEXT_ATTR = "attn_ctx"  # the attribute every module of a varlen model carries (see ``attach``)
PREFIX_KWARG = "rs_prefix"  # VarlenMeta.prefix on its way through transformers' **kwargs
CACHE_KWARG = "rs_cache"    # VarlenMeta.cache, the same way


@dataclass(frozen=True)
class VarlenMeta:
    """Where the packed sequences start: ``cu_seqlens`` [num_seqs + 1] int32, on the device.

    ``prefix`` (prefix reuse only): [2, num_seqs] int64 (or the same flat, [2 num_seqs], as the
    compiled forward passes it: see ``compiled.compile_forward``), the first packed row of the prefix
    segment each sequence also attends to, and that segment's length (0: none); ``max_seqlen``
    counts query rows (a suffix's own tokens). With the prefix cache, [4, num_seqs]: then the
    tokens each sequence reads from cached blocks (positions 0..n-1, before its prefix segment's)
    and where its blocks start in ``cache.table``; ``cache`` (``prefix_cache.CacheTensors``)
    holds the table, the slot of every packed row and the K/V pools."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    prefix: torch.Tensor | None = None
    cache: "CacheTensors | None" = None

    def as_kwargs(self) -> dict:
        """The keyword names transformers forwards untouched to the attention function."""
        out = {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
               "max_length_q": self.max_seqlen, "max_length_k": self.max_seqlen}
        if self.prefix is not None:
            out[PREFIX_KWARG] = self.prefix
        if self.cache is not None:
            out[CACHE_KWARG] = self.cache
        return out


class AttentionContext:
    """One model's attention state, owned by its runner and read by the attention hook.

    ``attach`` stores it on every module of the model, so the per-layer hook finds it with one
    plain attribute read (``module.attn_ctx``): no lookup table, no process-wide state.
    """

    def __init__(self, backend: str = "sdpa", gqa_native: bool = True):
        self.backend = backend          # the kernel in use (``resolve_backend``)
        self.gqa_native = gqa_native    # the torch kernel takes Hkv < H as is (``probe_torch_flash``)
        self.cuda_fallback = False      # a CUDA forward took the SDPA loop (host syncs: no graphs then)
        # The packed call in progress. Some transformers decoder layers (StableLM's, for one) do
        # not pass their **kwargs on to attention; the hook then reads the packing from here.
        # A model runs on one thread at a time (its runner's), so one slot is enough.
        self.meta: VarlenMeta | None = None
        self.cache_block = 0            # tokens per prefix-cache block (``attach_cache``; 0: no cache)

    def cuda_fallback_used(self, reset: bool = False) -> bool:
        """Whether a CUDA forward went through the SDPA loop since the last reset."""
        used = self.cuda_fallback
        if reset:
            self.cuda_fallback = False
        return used


def attach(model: torch.nn.Module, ctx: AttentionContext) -> AttentionContext:
    """Register ``ctx`` as the attention state of every module of ``model``; returns it."""
    for sub in model.modules():
        object.__setattr__(sub, CONTEXT_ATTR, ctx)  # a plain attribute: not a parameter or submodule
    return ctx


def context_of(model: torch.nn.Module) -> AttentionContext:
    """The context attached to ``model`` (``use_varlen_attention`` attaches an SDPA one)."""
    return getattr(model, CONTEXT_ATTR)


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(requested: str, device: torch.device) -> str:
    """Pick the kernel: ``auto`` prefers flash_attn, then our Triton kernel, then torch's bundled
    FlashAttention, then SDPA."""
    if device.type != "cuda":
        if requested in ("flash_attn", "triton", "torch"):
            raise ValueError(f"attention backend {requested!r} needs a CUDA device")
        return "sdpa"
    if requested == "auto":
        if has_flash_attn():
            return "flash_attn"
        return "triton" if triton_attention.is_available() else "torch"
    if requested == "flash_attn" and not has_flash_attn():
        raise ValueError("attention backend 'flash_attn' requested but the flash_attn package is not installed")
    if requested == "triton" and not triton_attention.is_available():
        raise ValueError("attention backend 'triton' requested but the triton package is not installed")
    return requested


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: VarlenMeta, *,
                     is_causal: bool, scale: float, window: int | None = None,
                     softcap: float | None = None, ctx: AttentionContext,
                     pools: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
    """q [T, H, D], k/v [T, Hkv, D] → [T, H, D] with ``ctx``'s kernel. ``window`` keeps keys with
    |q - k| < window (and k <= q when causal); ``softcap``: scores become softcap * tanh(score /
    softcap) (Gemma2). ``pools``: this layer's cached K and V [num_slots, Hkv, D] and the tokens
    of a block (prefix cache)."""
    backend = ctx.backend
    if meta.prefix is not None and backend in ("flash_attn", "torch"):  # no prefix path in those kernels
        backend = "sdpa"
    if softcap and backend == "torch":  # torch's bundled kernel does not soft-cap; ours and flash_attn do
        backend = "sdpa"
    if q.dtype == torch.float32 and backend != "sdpa":  # FlashAttention kernels are 16-bit only
        backend = "sdpa"
    if backend == "flash_attn":
        return _flash_attn(q, k, v, meta, is_causal, scale, window, softcap)
    if backend == "triton" and q.shape[-1] in (64, 128, 256):
        kc, vc, block = pools if pools is not None else (None, None, 0)
        table = meta.cache.table if pools is not None else None
        return torch.ops.rewardserve.triton_varlen_attention(q, k, v, meta.cu_seqlens, meta.max_seqlen,
                                                             is_causal, scale, window or 0, float(softcap or 0.0),
                                                             meta.prefix, kc, vc, table, block)
    if backend in ("triton", "torch") and not softcap and meta.prefix is None:  # torch's kernel takes the other head sizes
        return _torch_flash(q, k, v, meta, is_causal, scale, window, ctx.gqa_native)
    if q.is_cuda:
        ctx.cuda_fallback = True
    return _sdpa_masked(q, k, v, meta, is_causal, scale, window, softcap, pools)


def _flash_attn(q, k, v, meta, is_causal, scale, window, softcap):
    from flash_attn import flash_attn_varlen_func

    left = window - 1 if window else -1
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q=meta.cu_seqlens, cu_seqlens_k=meta.cu_seqlens,
                                  max_seqlen_q=meta.max_seqlen, max_seqlen_k=meta.max_seqlen,
                                  softmax_scale=scale, causal=is_causal, window_size=(left, 0 if is_causal else left),
                                  softcap=softcap or 0.0)


def _torch_flash(q, k, v, meta, is_causal, scale, window, gqa_native=True):
    # aten's FA2 entry point takes GQA directly (Hq % Hkv == 0) and a left window; torch's
    # public varlen_attn wraps this same op. probe_torch_flash() checks GQA once per runner.
    if k.shape[1] != q.shape[1] and not gqa_native:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    left = window - 1 if window else None
    right = (0 if is_causal else left) if window else None  # a bidirectional window spans both sides
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, meta.cu_seqlens, meta.cu_seqlens, meta.max_seqlen, meta.max_seqlen, 0.0, is_causal, False,
        scale=scale, window_size_left=left, window_size_right=right)
    return out[0]


def probe_torch_flash(device: torch.device) -> bool:
    """Check once that the torch kernel takes GQA (Hkv < H) natively; else repeat kv heads.

    Runs a tiny packed batch both ways and compares; returns the verdict (the runner keeps it in
    its ``AttentionContext.gqa_native``).
    """
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(40, 4, 64, device=device, dtype=torch.bfloat16, generator=gen)   # [T, H, D]
    k, v = (torch.randn(40, 2, 64, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    meta = VarlenMeta(torch.tensor([0, 17, 40], dtype=torch.int32, device=device), 23)
    want = _torch_flash(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), meta, True, 0.125, None)
    try:
        got = _torch_flash(q, k, v, meta, True, 0.125, None)
        native = bool((got.float() - want.float()).abs().max().item() < 1e-2)
    except RuntimeError:
        native = False
    return native


def sequence_mask(length: int, is_causal: bool, window: int | None, device: torch.device,
                  prefix: int = 0) -> torch.Tensor | None:
    """[n, prefix + n] bool for one sequence (True = may attend), or None when no mask is needed.

    With a ``prefix``, keys are the prefix's (absolute positions 0..prefix-1) then the sequence's
    own, and query i sits at position prefix + i."""
    if not is_causal and not window:
        return None
    q = torch.arange(prefix, prefix + length, device=device)
    k = torch.arange(prefix + length, device=device)
    dist = q[:, None] - k[None, :]  # query - key
    mask = dist >= 0 if is_causal else torch.ones(length, prefix + length, dtype=torch.bool, device=device)
    if window:
        mask &= dist.abs() < window
    return mask


def _sdpa_masked(q, k, v, meta, is_causal, scale, window, softcap, pools=None):
    """The block-diagonal mask, applied one diagonal block (one sequence) at a time.

    A dense [T, T] mask over a packed batch costs O(T^2) memory and time; the blocks cost
    O(sum n_i^2) and give the same result. A sequence's keys: its cached tokens (gathered from
    the pools through the block table), its prefix segment's, then its own.
    """
    num_heads = q.shape[1]
    rep = num_heads // k.shape[1]
    out = torch.empty_like(q)
    bounds = meta.cu_seqlens.tolist()
    num_seqs = len(bounds) - 1
    zeros = [0] * num_seqs
    flat = meta.prefix.reshape(-1).tolist() if meta.prefix is not None else zeros + zeros  # [2 (4) x S]
    rows = [flat[i:i + num_seqs] for i in range(0, len(flat), num_seqs)] if num_seqs else [[], []]
    pre_start, pre_len = rows[0], rows[1]
    cached, table_off = (rows[2], rows[3]) if len(rows) > 2 and pools is not None else (zeros, zeros)
    for s, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end == start:  # zero-length sequence (padding of a fixed-size batch)
            continue
        p0, pn, cn = pre_start[s], pre_len[s], cached[s]
        parts_k, parts_v = [], []
        if cn:  # cached tokens 0..cn-1: pool rows of the sequence's blocks
            idx = cached_rows(meta.cache.table, table_off[s], cn, pools[2])
            parts_k.append(pools[0][idx]), parts_v.append(pools[1][idx])
        if pn:
            parts_k.append(k[p0:p0 + pn]), parts_v.append(v[p0:p0 + pn])
        parts_k.append(k[start:end]), parts_v.append(v[start:end])
        kh, vh = (torch.cat(parts) if len(parts) > 1 else parts[0] for parts in (parts_k, parts_v))  # [keys, Hkv, D]
        if rep > 1:  # GQA: repeat kv heads
            kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
        qh = q[start:end].transpose(0, 1)                                 # [H, n, D]
        mask = sequence_mask(end - start, is_causal, window, q.device, cn + pn)
        out[start:end] = _attend(qh, kh.transpose(0, 1), vh.transpose(0, 1), mask, scale, softcap).transpose(0, 1)
    return out  # [T, H, D]


def cached_rows(table: torch.Tensor, offset: int, num_tokens: int, block: int) -> torch.Tensor:
    """Pool rows [num_tokens] of a sequence's first ``num_tokens`` cached tokens: its blocks are
    ``table[offset:]``, ``block`` tokens each."""
    blocks = table[offset:offset + -(-num_tokens // block)]                          # [nb]
    rows = blocks[:, None] * block + torch.arange(block, device=table.device)       # [nb, B]
    return rows.reshape(-1)[:num_tokens]


def _attend(qh, kh, vh, mask, scale, softcap):
    """One sequence: [H, n, D] → [H, n, D]; soft-capping needs the explicit scores."""
    if softcap:
        scores = torch.tanh((qh.float() @ kh.float().transpose(-1, -2)) * scale / softcap) * softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1).to(vh.dtype) @ vh)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)


class packed_call:
    """``with packed_call(ctx, meta):`` around a backbone forward makes ``meta`` ``ctx``'s active packing."""

    def __init__(self, ctx: AttentionContext, meta: VarlenMeta):
        self.ctx, self.meta = ctx, meta

    def __enter__(self) -> VarlenMeta:
        self.ctx.meta = self.meta
        return self.meta

    def __exit__(self, *exc) -> None:
        self.ctx.meta = None


def _packing_of(module, ctx: AttentionContext, kwargs: dict) -> VarlenMeta:
    if "cu_seq_lens_q" in kwargs:
        return VarlenMeta(kwargs["cu_seq_lens_q"], kwargs["max_length_q"], kwargs.get(PREFIX_KWARG),
                          kwargs.get(CACHE_KWARG))
    meta = ctx.meta
    if meta is None:  # called outside the engine's packed forward: refuse rather than mix sequences
        raise RuntimeError(f"{type(module).__name__}: packed attention called without cu_seqlens")
    return meta


def hf_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         sliding_window=None, softcap=None, **kwargs):
    """transformers attention hook: query [1, H, T, D], key/value [1, Hkv, T, D] → [1, T, H, D].

    The kernel and packing come from the module's ``AttentionContext`` (one attribute read)."""
    ctx = module.attn_ctx
    meta = _packing_of(module, ctx, kwargs)
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # [T, heads, D]
    pools = None
    if meta.cache is not None:  # prefix cache: store this layer's keys and values, read cached ones
        layer = module.rs_cache_layer  # set on each attention module by ``attach_cache``
        kc, vc = meta.cache.k[layer], meta.cache.v[layer]      # [num_slots, Hkv, D]
        torch.ops.rewardserve.store_kv(kc, vc, meta.cache.slots, k, v)
        pools = (kc, vc, ctx.cache_block)
    out = varlen_attention(q, k, v, meta, is_causal=is_causal, scale=scale, window=sliding_window, softcap=softcap,
                           ctx=ctx, pools=pools)
    return out.unsqueeze(0), None


@torch.library.custom_op("rewardserve::store_kv", mutates_args=("kc", "vc"))
def store_kv(kc: torch.Tensor, vc: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """kc/vc [num_slots, Hkv, D] (one layer's pools) get k/v [T, Hkv, D] at rows ``slots`` [T];
    rows with slot -1 (nothing to store) are skipped. One opaque op that declares what it
    mutates: compile writes the pools in place (no copy of a pool per forward). CUDA: a Triton
    kernel that moves only the stored rows (no host sync, so CUDA graphs capture it); the CPU
    picks the rows first."""
    if k.is_cuda and triton_attention.is_available():
        triton_attention.store_kv(kc, vc, slots, k, v)
        return
    rows = (slots >= 0).nonzero().squeeze(1)
    kc.index_copy_(0, slots[rows], k[rows])
    vc.index_copy_(0, slots[rows], v[rows])


@store_kv.register_fake
def _(kc, vc, slots, k, v) -> None:
    return None


def cache_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules of a decoder, in layer order (``layer_idx``), or [] when some
    attention module carries no layer index (the prefix cache then stays off)."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    if not found or any(not isinstance(getattr(m, "layer_idx", None), int) for m in found):
        return []
    return sorted(found, key=lambda m: m.layer_idx)


def attach_cache(layers: list[torch.nn.Module], ctx: AttentionContext, block_tokens: int) -> None:
    """Give each attention module its row of the K/V pools and ``ctx`` the block size."""
    for index, module in enumerate(layers):
        object.__setattr__(module, "rs_cache_layer", index)
    ctx.cache_block = block_tokens


def _no_mask(*args, **kwargs):
    return None  # packing boundaries live in cu_seqlens, not in a dense mask


def register_with_transformers() -> None:
    """Make ``attn_implementation="rewardserve_varlen"`` available to every transformers model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, hf_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
