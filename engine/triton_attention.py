"""Varlen FlashAttention forward written in Triton, for packed prefill on Hopper and Ampere GPUs.

Why our own kernel: torch's bundled FlashAttention-2 is built for sm80. On an H200
(benchmarks/bench_attention.py, Qwen3-0.6B heads, causal bf16) it ran packed 16k-token batches at
177-227 TFLOP/s and one 512-token sequence in 21.9 µs per layer; this kernel, for which Triton
emits Hopper tensor-core code, runs them at 271-331 TFLOP/s and in 13.6 µs. It is registered as a
torch custom op, so torch.compile and CUDA-graph capture treat it as one opaque call, like aten's
FlashAttention.

Layout: q [T, H, D], k/v [T, Hkv, D] (any row/head strides, unit stride over D), packed rows
split by ``cu_seqlens`` [S + 1] int32. Causal or not, GQA (H % Hkv == 0), an optional sliding window
(left of the query when causal, both sides when not) and optional logit soft-capping (Gemma2).

Shared prefixes (``prefix`` [2, S] int64: first row and length of the prefix segment each
sequence continues; 0 = none): a sequence's queries sit at absolute positions prefix_len + i and
attend to every key of its prefix segment first (a second key range in the same packed K/V,
windowed on absolute positions), then to their own keys as usual. Without ``prefix`` the kernel
is compiled without that loop.
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
    def _tanh(x):
        """tanh in fp32 from one exp2: 1 - 2 / (e^2x + 1) saturates to ±1 at both ends (no inf/inf)."""
        return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)  # 2 * log2(e)

    @triton.jit
    def _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d, seqlen,
                      stride_kt, stride_vt, qk_scale, softcap, window,
                      MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      HAS_SOFTCAP: tl.constexpr):
        """One key block: online-softmax update of acc [BM, D], l_i and m_i [BM] (log2 units)."""
        offs_k = n_start + offs_n                                   # [BN] key rows in the sequence
        if MASKED:
            kmask = offs_k < seqlen
            k = tl.load(k_base + offs_k[None, :] * stride_kt + offs_d[:, None], mask=kmask[None, :], other=0.0)
            v = tl.load(v_base + offs_k[:, None] * stride_vt + offs_d[None, :], mask=kmask[:, None], other=0.0)
        else:
            k = tl.load(k_base + offs_k[None, :] * stride_kt + offs_d[:, None])   # [D, BN]
            v = tl.load(v_base + offs_k[:, None] * stride_vt + offs_d[None, :])   # [BN, D]
        qk = tl.dot(q, k)                                           # [BM, BN] fp32
        if HAS_SOFTCAP:  # cap * tanh(s * scale / cap), before the mask; qk_scale = scale / cap,
            qk = _tanh(qk * qk_scale) * softcap                     # softcap = cap * log2(e)
        if MASKED:
            keep = kmask[None, :]
            if IS_CAUSAL:
                keep = keep & (offs_k[None, :] <= offs_m[:, None])
            if HAS_WINDOW:  # |q - k| < window (causal: the left side only, the rest is masked above)
                keep = keep & (offs_m[:, None] - offs_k[None, :] < window)
                if not IS_CAUSAL:
                    keep = keep & (offs_k[None, :] - offs_m[:, None] < window)
            qk = tl.where(keep, qk, float("-inf"))
        return _online_update(acc, l_i, m_i, qk, v, qk_scale, HAS_SOFTCAP)

    @triton.jit
    def _online_update(acc, l_i, m_i, qk, v, qk_scale, HAS_SOFTCAP: tl.constexpr):
        """Fold one block of scores qk [BM, BN] (masked keys at -inf) and values v [BN, D] into
        acc [BM, D], l_i and m_i [BM] (log2 units)."""
        if HAS_SOFTCAP:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
        else:  # scaling after the max: one FMA per score in the exp2 below
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)       # a row with no key yet
        if HAS_SOFTCAP:
            p = tl.math.exp2(qk - m_safe[:, None])                  # [BM, BN]
        else:
            p = tl.math.exp2(qk * qk_scale - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def _attend_cached(acc, l_i, m_i, q, KC, VC, Table, Prefix, seq, head, m_start, offs_m, offs_n, offs_d,
                       stride_ct, stride_ch, qk_scale, softcap, window,
                       GROUP: tl.constexpr, BLOCK_N: tl.constexpr, CACHE_BLOCK: tl.constexpr,
                       HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
        """The sequence's cached keys (positions 0..cache_len-1, read from the pools KC/VC
        [slots, Hkv, D] through its blocks ``Table[table_off:]``): all precede the tile's
        queries (at cache_len + pre_len + offs_m); only a window masks inside."""
        num_seqs = tl.num_programs(1)
        pre_len = tl.load(Prefix + num_seqs + seq)
        cache_len = tl.load(Prefix + 2 * num_seqs + seq)
        table_off = tl.load(Prefix + 3 * num_seqs + seq)
        offs_qa = offs_m + cache_len + pre_len                      # [BM] absolute query positions
        kc_base = KC + (head // GROUP) * stride_ch
        vc_base = VC + (head // GROUP) * stride_ch
        lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, cache_len + pre_len + m_start - window + 1) // BLOCK_N * BLOCK_N
        for n_start in tl.range(lo, cache_len, BLOCK_N):
            offs_k = n_start + offs_n                               # [BN] absolute key positions
            kmask = offs_k < cache_len
            block = tl.load(Table + table_off + offs_k // CACHE_BLOCK, mask=kmask, other=0)
            rows = block * CACHE_BLOCK + offs_k % CACHE_BLOCK       # [BN] pool rows
            k = tl.load(kc_base + rows[None, :] * stride_ct + offs_d[:, None], mask=kmask[None, :], other=0.0)
            v = tl.load(vc_base + rows[:, None] * stride_ct + offs_d[None, :], mask=kmask[:, None], other=0.0)
            qk = tl.dot(q, k)                                       # [BM, BN] fp32
            if HAS_SOFTCAP:
                qk = _tanh(qk * qk_scale) * softcap
            keep = kmask[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_qa[:, None] - offs_k[None, :] < window)
            qk = tl.where(keep, qk, float("-inf"))
            acc, l_i, m_i = _online_update(acc, l_i, m_i, qk, v, qk_scale, HAS_SOFTCAP)
        return acc, l_i, m_i

    @triton.jit
    def _attend_prefix(acc, l_i, m_i, q, K, V, Prefix, seq, head, m_start, offs_m, offs_n, offs_d,
                       stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, softcap, window,
                       GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
        """The keys of the sequence's prefix segment (none when its length is 0): all precede the
        tile's queries, at absolute positions pre_len + offs_m; only a window masks inside."""
        pre_start = tl.load(Prefix + seq)
        pre_len = tl.load(Prefix + tl.num_programs(1) + seq)
        kp_base = K + pre_start * stride_kt + (head // GROUP) * stride_kh
        vp_base = V + pre_start * stride_vt + (head // GROUP) * stride_vh
        offs_qa = offs_m + pre_len                                  # [BM] absolute query positions
        full = pre_len // BLOCK_N * BLOCK_N                         # blocks with no key past the prefix
        lo = 0
        mid_lo = 0
        if HAS_WINDOW:  # the tile's first query sees keys from pre_len + m_start - window + 1 on
            lo = tl.maximum(0, pre_len + m_start - window + 1) // BLOCK_N * BLOCK_N
            mid_lo = tl.minimum(tl.cdiv(tl.maximum(0, pre_len + m_start + BLOCK_M - window), BLOCK_N) * BLOCK_N,
                                full)
            mid_lo = tl.maximum(mid_lo, lo)
        for n_start in tl.range(lo, mid_lo, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, kp_base, vp_base, n_start, offs_qa, offs_n, offs_d,
                                          pre_len, stride_kt, stride_vt, qk_scale, softcap, window,
                                          True, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        for n_start in tl.range(mid_lo, full, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, kp_base, vp_base, n_start, offs_qa, offs_n, offs_d,
                                          pre_len, stride_kt, stride_vt, qk_scale, softcap, window,
                                          False, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        for n_start in tl.range(tl.maximum(full, lo), pre_len, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, kp_base, vp_base, n_start, offs_qa, offs_n, offs_d,
                                          pre_len, stride_kt, stride_vt, qk_scale, softcap, window,
                                          True, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        return acc, l_i, m_i

    @triton.jit
    def _varlen_fwd(Q, K, V, Out, cu_seqlens, Prefix, KC, VC, Table, qk_scale, softcap, window,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                    stride_ct, stride_ch,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    HAS_PREFIX: tl.constexpr, HAS_CACHE: tl.constexpr, CACHE_BLOCK: tl.constexpr):
        """Grid (query blocks of the longest sequence, sequences, heads); idle programs exit."""
        seq = tl.program_id(1)
        head = tl.program_id(2)
        start = tl.load(cu_seqlens + seq)
        seqlen = tl.load(cu_seqlens + seq + 1) - start
        num_m = tl.cdiv(seqlen, BLOCK_M)
        if tl.program_id(0) >= num_m:
            return
        m_block = num_m - 1 - tl.program_id(0)  # causal work grows along the sequence: longest first
        m_start = m_block * BLOCK_M
        offs_m = m_start + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=(offs_m < seqlen)[:, None], other=0.0)   # [BM, D]
        k_base = K + start * stride_kt + (head // GROUP) * stride_kh
        v_base = V + start * stride_vt + (head // GROUP) * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        if HAS_CACHE:
            acc, l_i, m_i = _attend_cached(acc, l_i, m_i, q, KC, VC, Table, Prefix, seq, head, m_start, offs_m,
                                           offs_n, offs_d, stride_ct, stride_ch, qk_scale, softcap, window,
                                           GROUP, BLOCK_N, CACHE_BLOCK, HAS_WINDOW, HAS_SOFTCAP)
        if HAS_PREFIX:
            acc, l_i, m_i = _attend_prefix(acc, l_i, m_i, q, K, V, Prefix, seq, head, m_start, offs_m, offs_n,
                                           offs_d, stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, softcap,
                                           window, GROUP, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        # Keys [lo, hi) split in three runs of whole key blocks: [lo, mid_lo) masked (a window's
        # left edge), [mid_lo, mid_hi) seen by every query of the tile (no mask), [mid_hi, hi)
        # masked (the diagonal, the sequence's tail, a two-sided window's right edge).
        if IS_CAUSAL:
            hi = tl.minimum(m_start + BLOCK_M, seqlen)
            # keys below the tile's first query, rounded down to whole key blocks, since a key
            # block wider than the query tile would cross the diagonal
            mid_hi = m_start // BLOCK_N * BLOCK_N
        else:
            hi = seqlen
            mid_hi = seqlen // BLOCK_N * BLOCK_N
        lo = 0
        mid_lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, m_start - window + 1) // BLOCK_N * BLOCK_N
            if not IS_CAUSAL:
                hi = tl.minimum(seqlen, m_start + BLOCK_M + window - 1)
                mid_hi = tl.minimum(mid_hi, (m_start + window) // BLOCK_N * BLOCK_N)
            # the tile's last query sees keys from m_start + BLOCK_M - window on
            mid_lo = tl.minimum(tl.cdiv(tl.maximum(0, m_start + BLOCK_M - window), BLOCK_N) * BLOCK_N, mid_hi)
        for n_start in tl.range(lo, mid_lo, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d,
                                          seqlen, stride_kt, stride_vt, qk_scale, softcap, window,
                                          True, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        for n_start in tl.range(mid_lo, mid_hi, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d,
                                          seqlen, stride_kt, stride_vt, qk_scale, softcap, window,
                                          False, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        for n_start in tl.range(mid_hi, hi, BLOCK_N):
            acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, n_start, offs_m, offs_n, offs_d,
                                          seqlen, stride_kt, stride_vt, qk_scale, softcap, window,
                                          True, IS_CAUSAL, HAS_WINDOW, HAS_SOFTCAP)
        acc = acc / l_i[:, None]
        o_ptrs = Out + (start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=(offs_m < seqlen)[:, None])


if triton is not None:
    @triton.jit
    def _store_kv(K, V, KC, VC, Slots, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_ch,
                  KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        """Grid (T,): row t of k/v [T, Hkv, D] to pool row Slots[t] of KC/VC; a negative slot: skip."""
        t = tl.program_id(0)
        slot = tl.load(Slots + t)
        if slot < 0:
            return
        offs_h = tl.arange(0, BLOCK_H)[:, None]
        offs_d = tl.arange(0, BLOCK_D)[None, :]
        mask = (offs_h < KV_HEADS) & (offs_d < HEAD_DIM)
        k = tl.load(K + t * stride_kt + offs_h * stride_kh + offs_d, mask=mask)
        v = tl.load(V + t * stride_vt + offs_h * stride_vh + offs_d, mask=mask)
        tl.store(KC + slot * stride_ct + offs_h * stride_ch + offs_d, k, mask=mask)
        tl.store(VC + slot * stride_ct + offs_h * stride_ch + offs_d, v, mask=mask)


def store_kv(kc: torch.Tensor, vc: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """kc/vc [num_slots, Hkv, D] get rows t of k/v [T, Hkv, D] at ``slots[t]`` [T] int64, rows with
    a negative slot skipped (the prefix cache's stores: only rows of blocks being stored move)."""
    if any(x.stride(-1) != 1 for x in (k, v, kc, vc)) or kc.stride() != vc.stride():
        raise ValueError("store_kv needs unit-stride heads and pools of one layout")
    kv_heads, head_dim = k.shape[1], k.shape[2]
    _store_kv[(k.shape[0],)](k, v, kc, vc, slots, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                             kc.stride(0), kc.stride(1), KV_HEADS=kv_heads, HEAD_DIM=head_dim,
                             BLOCK_H=triton.next_power_of_2(kv_heads), BLOCK_D=triton.next_power_of_2(head_dim))


# 256-wide heads: q [BM, 256] plus num_stages x (k and v [BN, 256]) in bf16 must fit an SM's
# 227 KiB of shared memory, and the fp32 accumulator [BM, 256] the registers. H200 sweep of the
# candidates (benchmarks/bench_attention.py --models gemma2-2b, soft-capped, 8 / 4 heads;
# results/h200-2026-12-02-gemma2-attention-tiles.json): 128 x 64 keys, 8 warps, 2 stages (192 KiB)
# ran packed 16k-token batches in 284-363 µs (212-266 TFLOP/s) against 357-467 µs for 64 x 32 x 3
# stages, and one 2048-token sequence in 81 µs against 110; 64 x 32 is ~5 µs faster at 128-512
# tokens (10.4 / 20.7 µs against 11.9 / 25.8), a smaller loss than the gain on long batches.
HEAD_DIM_256_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}


def pick_tiles(head_dim: int) -> dict:
    """The launch config. Measured on an H200 (benchmarks/bench_attention.py): 64-row query tiles
    with 64-key steps and 4 warps beat 128-row tiles for every shape we serve, from one 128-token
    sequence (6 µs vs 8) to packed 16k-token batches (271-343 TFLOP/s vs 237-316): more
    programs per SM hide each one's serial key loop. 256-wide heads: ``HEAD_DIM_256_TILES``."""
    if head_dim > 128:
        return dict(HEAD_DIM_256_TILES)
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *,
           is_causal: bool, scale: float, window: int | None = None, softcap: float | None = None,
           tiles: dict | None = None, prefix: torch.Tensor | None = None,
           cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
    """q [T, H, D], k/v [T, Hkv, D] → out [T, H, D] (q's dtype).

    ``prefix``: [2, S] int64 (contiguous; or flat, [2 S]), each sequence's prefix segment (first row, length);
    ``max_seqlen`` counts query rows. ``cache`` (kc, vc [slots, Hkv, D], table [N] int64, block
    tokens): the prefix cache; ``prefix`` is then [4, S], its last rows each sequence's cached
    tokens and table offset (``attention.VarlenMeta``).

    ``window``: keys with q - k < window (and k - q < window when not causal, as Gemma3's
    bidirectional layers); ``softcap``: scores become ``softcap * tanh(score / softcap)`` (Gemma2)
    before the mask and the softmax, where score = scale * q·k."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    if head_dim not in (64, 128, 256) or any(x.stride(-1) != 1 for x in (q, k, v)):
        raise ValueError(f"triton varlen attention takes head_dim 64/128/256 with unit stride, got {tuple(q.shape)}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tiles = dict(tiles or pick_tiles(head_dim))
    num_seqs = cu_seqlens.shape[0] - 1
    grid = (triton.cdiv(max(max_seqlen, 1), tiles["BLOCK_M"]), num_seqs, num_heads)
    # With soft-capping the kernel scales q·k by scale / cap inside the tanh and multiplies by
    # cap * log2(e) after it; without, by scale * log2(e) (its exp2 works in log2 units).
    qk_scale, cap = (scale / softcap, softcap * LOG2E) if softcap else (scale * LOG2E, 0.0)
    rows = 4 if cache is not None else 2
    if prefix is not None and (prefix.numel() != rows * num_seqs or not prefix.is_contiguous()):
        raise ValueError(f"prefix must be a contiguous [{rows}, {num_seqs}] tensor (or flat), got {tuple(prefix.shape)}")
    if cache is not None and (prefix is None or cache[0].stride() != cache[1].stride() or cache[0].stride(-1) != 1):
        raise ValueError("the prefix cache needs the prefix region and pools of one layout")
    kc, vc, table, block = cache if cache is not None else (k, v, cu_seqlens, 16)
    _varlen_fwd[grid](q, k, v, out, cu_seqlens, cu_seqlens if prefix is None else prefix, kc, vc, table,
                      qk_scale, cap, window or 0,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      out.stride(0), out.stride(1), kc.stride(0), kc.stride(1),
                      GROUP=num_heads // k.shape[1], HEAD_DIM=head_dim,
                      IS_CAUSAL=is_causal, HAS_WINDOW=bool(window), HAS_SOFTCAP=bool(softcap),
                      HAS_PREFIX=prefix is not None, HAS_CACHE=cache is not None, CACHE_BLOCK=block, **tiles)
    return out


@torch.library.custom_op("rewardserve::triton_varlen_attention", mutates_args=())
def triton_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int, is_causal: bool, scale: float, window: int,
                            softcap: float = 0.0, prefix: torch.Tensor | None = None,
                            kc: torch.Tensor | None = None, vc: torch.Tensor | None = None,
                            table: torch.Tensor | None = None, cache_block: int = 0) -> torch.Tensor:
    """The kernel as one opaque op for torch.compile and CUDA graphs (``window`` / ``softcap`` 0 = none;
    ``prefix`` None = no shared prefixes; ``kc``/``vc``/``table`` None = no prefix cache)."""
    cache = (kc, vc, table, cache_block) if kc is not None else None
    return launch(q, k, v, cu_seqlens, max_seqlen, is_causal=is_causal, scale=scale, window=window or None,
                  softcap=softcap or None, prefix=prefix, cache=cache)


@triton_varlen_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, window, softcap=0.0, prefix=None, kc=None, vc=None,
      table=None, cache_block=0):
    return torch.empty_like(q)
