"""Varlen FlashAttention forward written in Triton, for packed prefill on Hopper and Ampere GPUs.

Why our own kernel: torch's bundled FlashAttention-2 is built for sm80. On an H200
(benchmarks/bench_attention.py, Qwen3-0.6B heads, causal bf16) it ran packed 16k-token batches at
177-227 TFLOP/s and one 512-token sequence in 21.9 µs per layer; this kernel, for which Triton
emits Hopper tensor-core code, runs them at 271-331 TFLOP/s and in 13.6 µs. It is registered as a
torch custom op, so torch.compile and CUDA-graph capture treat it as one opaque call, like aten's
FlashAttention.

Layout: q [T, H, D], k/v [T, Hkv, D] (any row/head strides, unit stride over D), packed rows
split by ``cu_seqlens`` [S + 1] int32. Causal or not, GQA (H % Hkv == 0), an optional left window.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no triton; is_available() then says no
    triton = None

LOG2E = 1.4426950408889634


def is_available() -> bool:
    """Triton is importable (the kernel itself needs a CUDA device, checked by the caller)."""
    return triton is not None


if triton is not None:
    @triton.jit
    def _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d, seqlen,
                      stride_kt, stride_vt, qk_scale, window,
                      MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
        """One key block: online-softmax update of acc [BM, D], l_i and m_i [BM]."""
        offs_k = n_start + offs_n                                   # [BN] key rows in the sequence
        if MASKED:
            kmask = offs_k < seqlen
            k = tl.load(k_base + offs_k[None, :] * stride_kt + offs_d[:, None], mask=kmask[None, :], other=0.0)
            v = tl.load(v_base + offs_k[:, None] * stride_vt + offs_d[None, :], mask=kmask[:, None], other=0.0)
        else:
            k = tl.load(k_base + offs_k[None, :] * stride_kt + offs_d[:, None])   # [D, BN]
            v = tl.load(v_base + offs_k[:, None] * stride_vt + offs_d[None, :])   # [BN, D]
        qk = tl.dot(q, k)                                           # [BM, BN] fp32
        if MASKED:
            keep = kmask[None, :]
            if IS_CAUSAL:
                keep = keep & (offs_k[None, :] <= offs_m[:, None])
            if HAS_WINDOW:
                keep = keep & (offs_m[:, None] - offs_k[None, :] < window)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)       # a row with no key yet
        p = tl.math.exp2(qk * qk_scale - m_safe[:, None])           # [BM, BN]
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def _varlen_fwd(Q, K, V, Out, cu_seqlens, qk_scale, window,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
        """Grid (query blocks of the longest sequence, sequences, heads); idle programs exit."""
        seq = tl.program_id(1)
        head = tl.program_id(2)
        start = tl.load(cu_seqlens + seq)
        seqlen = tl.load(cu_seqlens + seq + 1) - start
        num_m = tl.cdiv(seqlen, BLOCK_M)
        if tl.program_id(0) >= num_m:
            return
        m_block = num_m - 1 - tl.program_id(0)  # causal work grows along the sequence: longest first
        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=(offs_m < seqlen)[:, None], other=0.0)   # [BM, D]
        k_base = K + start * stride_kt + (head // GROUP) * stride_kh
        v_base = V + start * stride_vt + (head // GROUP) * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # Keys [lo, full) need no mask; [full, hi) do (the diagonal, the sequence's tail, a window).
        hi = tl.minimum((m_block + 1) * BLOCK_M, seqlen) if IS_CAUSAL else seqlen
        # Causal: keys below the tile's first query are visible to all of it; rounded down to whole
        # key blocks, since a key block wider than the query tile would cross the diagonal.
        full = (m_block * BLOCK_M if IS_CAUSAL else seqlen) // BLOCK_N * BLOCK_N
        lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, m_block * BLOCK_M - window + 1) // BLOCK_N * BLOCK_N
            full = lo
        for n_start in tl.range(lo, full, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d,
                                          seqlen, stride_kt, stride_vt, qk_scale, window,
                                          False, IS_CAUSAL, HAS_WINDOW)
        for n_start in tl.range(full, hi, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d,
                                          seqlen, stride_kt, stride_vt, qk_scale, window,
                                          True, IS_CAUSAL, HAS_WINDOW)
        acc = acc / l_i[:, None]
        o_ptrs = Out + (start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=(offs_m < seqlen)[:, None])


def pick_tiles(head_dim: int) -> dict:
    """The launch config. Measured on an H200 (benchmarks/bench_attention.py): 64-row query tiles
    with 64-key steps and 4 warps beat 128-row tiles for every shape we serve, from one 128-token
    sequence (6 µs vs 8) to packed 16k-token batches (271-343 TFLOP/s vs 237-316): more
    programs per SM hide each one's serial key loop. 256-wide heads take 32-key steps (registers)."""
    return {"BLOCK_M": 64, "BLOCK_N": 64 if head_dim <= 128 else 32, "num_warps": 4, "num_stages": 3}


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *,
           is_causal: bool, scale: float, window: int | None = None, tiles: dict | None = None) -> torch.Tensor:
    """q [T, H, D], k/v [T, Hkv, D] → out [T, H, D] (q's dtype). ``window``: keys with q - k < window."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    if head_dim not in (64, 128, 256) or any(x.stride(-1) != 1 for x in (q, k, v)):
        raise ValueError(f"triton varlen attention takes head_dim 64/128/256 with unit stride, got {tuple(q.shape)}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tiles = dict(tiles or pick_tiles(head_dim))
    num_seqs = cu_seqlens.shape[0] - 1
    grid = (triton.cdiv(max(max_seqlen, 1), tiles["BLOCK_M"]), num_seqs, num_heads)
    _varlen_fwd[grid](q, k, v, out, cu_seqlens, scale * LOG2E, window or 0,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      out.stride(0), out.stride(1), GROUP=num_heads // k.shape[1], HEAD_DIM=head_dim,
                      IS_CAUSAL=is_causal, HAS_WINDOW=bool(window), **tiles)
    return out


@torch.library.custom_op("rewardserve::triton_varlen_attention", mutates_args=())
def triton_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int, is_causal: bool, scale: float, window: int) -> torch.Tensor:
    """The kernel as one opaque op for torch.compile and CUDA graphs (``window`` 0 = none)."""
    return launch(q, k, v, cu_seqlens, max_seqlen, is_causal=is_causal, scale=scale, window=window or None)


@triton_varlen_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, window):
    return torch.empty_like(q)
