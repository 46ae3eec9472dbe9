"""Attention reading the prefix cache: the SDPA loop's cached path against whole sequences, and
the Triton kernel's against the SDPA loop (CPU interpreter; bf16 on a GPU, marked ``gpu``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefix_cache_triton_cases import BLOCK, CASES, STORE_CASES, build, run_case, run_store_case
from rewardserve.engine.attention import VarlenMeta, _sdpa_masked

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("case", range(len(CASES)))
def test_sdpa_cached_path_equals_whole_sequences(case):
    """Each sequence of a case (its cached tokens, its prefix segment's, its own) equals the same
    tokens run as one ordinary sequence: the cached keys come from the pool blocks in order."""
    lengths, parents, cached, heads, kv_heads, head_dim, window, softcap = CASES[case]
    q, k, v, cu, prefix, cache, max_len = build(CASES[case])
    got = _sdpa_masked(q, k, v, VarlenMeta(cu, max_len, prefix, cache), True, head_dim ** -0.5, window, softcap,
                       (cache.k[0], cache.v[0], BLOCK))
    for s, parent in enumerate(parents):
        start, n = int(cu[s]), lengths[s]
        if n == 0:
            continue
        c, off = int(prefix[2, s]), int(prefix[3, s])
        rows = (cache.table[off:off + c // BLOCK, None] * BLOCK + torch.arange(BLOCK)).reshape(-1)
        keys, values = [cache.k[0][rows]], [cache.v[0][rows]]
        if parent >= 0:
            p0, pn = int(prefix[0, s]), int(prefix[1, s])
            keys.append(k[p0:p0 + pn]), values.append(v[p0:p0 + pn])
        keys.append(k[start:start + n]), values.append(v[start:start + n])
        whole_k, whole_v = torch.cat(keys), torch.cat(values)
        total = whole_k.shape[0]
        # queries for the whole sequence: only the last n (the segment's own) are compared
        whole_q = torch.cat([torch.zeros(total - n, heads, head_dim), q[start:start + n]])
        want = _sdpa_masked(whole_q, whole_k, whole_v, VarlenMeta(torch.tensor([0, total], dtype=torch.int32), total),
                            True, head_dim ** -0.5, window, softcap)[total - n:]
        assert (got[start:start + n] - want).abs().max().item() <= 1e-5, s


def test_kernel_cache_logic_in_the_interpreter():
    """fp32 through three tile shapes, fp16 through the engine's: cached prefixes shorter and
    longer than a key block, a root read whole (empty segment), windows into the cached tokens,
    soft-capping, GQA, head_dim 64/128/256; and the store kernel (skipped rows, masked lanes)."""
    import triton  # noqa: F401 - requirements-dev.txt installs it
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(HERE / "prefix_cache_triton_cases.py")], env=env, capture_output=True,
                          text=True, timeout=600, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 4 * len(CASES) + 2 * len(STORE_CASES)
    for name, err in errors.items():
        assert err <= (1e-5 if "float32" in name else 5e-3), (name, err)
    assert all(err == 0 for name, err in errors.items() if "/store/" in name)  # stores move values exactly


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_cache_bf16_on_gpu(case):
    if not torch.cuda.is_available():
        pytest.fail("gpu test needs CUDA")
    assert run_case(CASES[case], torch.bfloat16, "cuda", None) <= 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(STORE_CASES)))
def test_store_kernel_on_gpu(case):
    if not torch.cuda.is_available():
        pytest.fail("gpu test needs CUDA")
    assert run_store_case(STORE_CASES[case], torch.bfloat16, "cuda") == 0
