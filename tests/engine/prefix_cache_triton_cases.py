"""Cases for the prefix cache's read path: the Triton kernel's against the SDPA loop's (itself
checked against whole sequences in test_prefix_cache_attention.py).

Run as a script with TRITON_INTERPRET=1 (CPU) or imported by the GPU test. Prints one JSON line:
the worst error of each case.
"""
from __future__ import annotations

import json
import sys

import torch

from rewardserve.engine.attention import VarlenMeta, _sdpa_masked
from rewardserve.engine.prefix_cache import CacheTensors

BLOCK = 16
# segment lengths, the segment each continues (-1: none), cached tokens of each root segment,
# heads, kv heads, head_dim, window, soft-cap. Cached prefixes shorter and longer than a key
# block, a root read whole from the cache (an empty segment), a root with no cache beside one,
# windows reaching into the cached tokens or not.
CASES = [
    ((30, 5, 33), (-1, 0, 0), (32, 0, 0), 4, 2, 64, None, None),
    ((0, 7, 20, 40), (-1, 0, 0, -1), (96, 0, 0, 0), 2, 1, 64, None, None),
    ((17, 40, 9), (-1, 0, -1), (80, 0, 16), 4, 2, 64, 48, None),
    ((50, 8, 3), (-1, 0, -1), (64, 0, 128), 2, 2, 128, 100, 2.0),
    ((33, 70), (-1, 0), (48, 0), 2, 1, 256, None, 5.0),
]


def build(case, num_blocks: int = 40):
    """q [T, H, D], k/v [T, Hkv, D], cu [S + 1] int32, prefix [4, S], cache tensors, max length,
    block size. Roots' cached tokens live in shuffled pool blocks (block 0 unused)."""
    lengths, parents, cached, heads, kv_heads, head_dim, _, _ = case
    gen = torch.Generator().manual_seed(sum(lengths) + sum(cached))
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim, generator=gen)
    k, v = (torch.randn(total, kv_heads, head_dim, generator=gen) for _ in range(2))
    pool_k, pool_v = (torch.randn(num_blocks * BLOCK, kv_heads, head_dim, generator=gen) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.zeros(4, len(lengths), dtype=torch.int64)
    free = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    table: list[int] = []
    for s, parent in enumerate(parents):
        root = parent if parent >= 0 else s
        if parent >= 0:
            prefix[0, s], prefix[1, s] = int(cu[parent]), lengths[parent]
        if parent < 0 and cached[s]:
            prefix[3, s] = len(table)
            table += [free.pop() for _ in range(cached[s] // BLOCK)]
        prefix[2, s], prefix[3, s] = cached[root], prefix[3, root]
    cache = CacheTensors(torch.tensor(table or [0], dtype=torch.int64), torch.zeros(total, dtype=torch.int64),
                         (pool_k,), (pool_v,))
    return q, k, v, cu, prefix, cache, max(lengths)


def reference(case):
    """The SDPA loop's answer (float32) and the case's tensors."""
    window, softcap, head_dim = case[6], case[7], case[5]
    q, k, v, cu, prefix, cache, max_len = build(case)
    meta = VarlenMeta(cu, max_len, prefix, cache)
    want = _sdpa_masked(q, k, v, meta, True, head_dim ** -0.5, window, softcap, (cache.k[0], cache.v[0], BLOCK))
    return want, (q, k, v, cu, prefix, cache, max_len)


def run_case(case, dtype: torch.dtype, device: str, tiles: dict | None) -> float:
    from rewardserve.engine import triton_attention

    window, softcap, head_dim = case[6], case[7], case[5]
    want, (q, k, v, cu, prefix, cache, max_len) = reference(case)
    q, k, v, kc, vc = (x.to(device=device, dtype=dtype) for x in (q, k, v, cache.k[0], cache.v[0]))
    cu, prefix, table = (x.to(device) for x in (cu, prefix, cache.table))
    got = triton_attention.launch(q, k, v, cu, max(max_len, 1), is_causal=True, scale=head_dim ** -0.5,
                                  window=window, softcap=softcap, tiles=tiles, prefix=prefix,
                                  cache=(kc, vc, table, BLOCK))
    return (got.float().cpu() - want).abs().max().item() if want.numel() else 0.0


STORE_CASES = [(37, 2, 64), (20, 3, 128), (9, 1, 80)]  # rows, kv heads, head_dim (80: masked lanes)


def run_store_case(case, dtype: torch.dtype, device: str) -> float:
    """The Triton store of k/v rows into pool slots (negative: skipped) against index_copy_;
    k/v laid out as the attention hook sees them ([Hkv, T, D] transposed)."""
    from rewardserve.engine import triton_attention

    rows, kv_heads, head_dim = case
    gen = torch.Generator().manual_seed(rows)
    k, v = (torch.randn(kv_heads, rows, head_dim, generator=gen).to(dtype).float().transpose(0, 1)
            for _ in range(2))  # [T, Hkv, D], values the dtype holds exactly
    slots = torch.randperm(4 * rows, generator=gen)[:rows]
    slots[torch.rand(rows, generator=gen) < 0.3] = -1
    want_k, want_v = (torch.zeros(4 * rows, kv_heads, head_dim) for _ in range(2))
    keep = slots >= 0
    want_k[slots[keep]], want_v[slots[keep]] = k[keep], v[keep]
    kc, vc = (torch.zeros(4 * rows, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(2))
    triton_attention.store_kv(kc, vc, slots.to(device), k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
    return max((kc.float().cpu() - want_k).abs().max().item(), (vc.float().cpu() - want_v).abs().max().item())


if __name__ == "__main__":
    from triton_cases import patch_interpreter

    patch_interpreter()
    tiles = {"m32n16": {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
             "m16n32": {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}, "default": None}
    runs = [(torch.float32, name) for name in tiles] + [(torch.float16, "default")]
    errors = {f"{dtype}/{name}/{i}": run_case(case, dtype, "cpu", tiles[name]) for dtype, name in runs
              for i, case in enumerate(CASES)}
    errors.update({f"{dtype}/store/{i}": run_store_case(case, dtype, "cpu") for dtype in (torch.float32, torch.float16)
                   for i, case in enumerate(STORE_CASES)})
    print(json.dumps(errors))
    sys.exit(0)
