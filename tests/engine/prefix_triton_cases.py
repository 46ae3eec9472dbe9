"""Cases for the Triton kernel's shared-prefix path, checked against the SDPA loop's prefix path
(itself checked against whole sequences in test_prefix_attention.py).

Run as a script with TRITON_INTERPRET=1 (CPU) or imported by the GPU test. Prints one JSON line:
the worst error of each case.
"""
from __future__ import annotations

import json
import sys

import torch

from rewardserve.engine.attention import VarlenMeta, _sdpa_masked
from triton_cases import interpreter_errors, random_packed

# segment lengths, the segment each one continues (-1: none), heads, kv heads, head_dim,
# window, soft-cap. Prefixes shorter and longer than a key block, not block-aligned, a prefix
# of 0 tokens beside one, a trailing empty sequence (graph padding), windows that cut into the
# prefix (a masked left edge inside it) or leave it whole.
CASES = [
    ((70, 5, 33, 1), (-1, 0, 0, 0), 4, 2, 64, None, None),
    ((19, 40, 9, 25, 64, 0), (-1, 0, -1, -1, 3, -1), 2, 1, 64, None, None),
    ((130, 40, 17), (-1, 0, 0), 4, 2, 64, 48, None),
    ((50, 30, 70, 8), (-1, 0, 0, 0), 2, 2, 128, 16, 2.0),
    ((33, 70, 33), (-1, 0, 0), 2, 1, 256, 24, 5.0),
    ((96, 64, 1), (-1, 0, 0), 2, 1, 64, None, 1.0),
]


def packed(case):
    """q [T, H, D], k/v [T, Hkv, D], cu [S + 1] int32, prefix [2, S] int64, max query length."""
    lengths, parents, heads, kv_heads, head_dim, _, _ = case
    q, k, v, cu = random_packed(lengths, heads, kv_heads, head_dim, torch.Generator().manual_seed(sum(lengths)))
    prefix = torch.zeros(2, len(lengths), dtype=torch.int64)
    for s, parent in enumerate(parents):
        if parent >= 0:
            prefix[0, s], prefix[1, s] = int(cu[parent]), lengths[parent]
    return q, k, v, cu, prefix, max(lengths)


def run_case(case, dtype: torch.dtype, device: str, tiles: dict | None) -> float:
    from rewardserve.engine import triton_attention

    window, softcap, head_dim = case[5], case[6], case[4]
    q, k, v, cu, prefix, max_len = packed(case)
    want = _sdpa_masked(q, k, v, VarlenMeta(cu, max_len, prefix), True, head_dim ** -0.5, window, softcap)
    q, k, v, cu, prefix = (x.to(device) for x in (q.to(dtype), k.to(dtype), v.to(dtype), cu, prefix))
    got = triton_attention.launch(q, k, v, cu, max_len, is_causal=True, scale=head_dim ** -0.5, window=window,
                                  softcap=softcap, tiles=tiles, prefix=prefix)
    return (got.float().cpu() - want).abs().max().item()


if __name__ == "__main__":
    print(json.dumps(interpreter_errors(run_case, CASES)))
    sys.exit(0)
