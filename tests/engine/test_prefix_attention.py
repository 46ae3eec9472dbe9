"""Attention with shared prefixes: the SDPA loop's prefix path against whole sequences, and the
Triton kernel's against the SDPA loop (CPU interpreter; bf16 on a GPU, marked ``gpu``)."""
from __future__ import annotations

import pytest
import torch

from prefix_triton_cases import CASES, run_case
from rewardserve.engine.attention import VarlenMeta, _sdpa_masked
from triton_cases import run_script


@pytest.mark.parametrize("window,softcap", [(None, None), (16, None), (40, 2.0), (None, 1.0)])
def test_sdpa_prefix_path_equals_whole_sequences(window, softcap):
    """A 48-token prefix computed once, three suffixes attending to it, equal the three whole
    sequences (prefix + suffix) run as ordinary packed sequences; a window cuts into the prefix."""
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, prefix_len, suffixes = 4, 2, 32, 48, (1, 20, 33)
    shared = [torch.randn(prefix_len, h, dim, generator=gen) for h in (heads, kv_heads, kv_heads)]  # q, k, v
    own = [[torch.randn(n, h, dim, generator=gen) for h in (heads, kv_heads, kv_heads)] for n in suffixes]
    # whole sequences: [prefix, suffix_i] each
    whole = [torch.cat([torch.cat([shared[j], o[j]]) for o in own]) for j in range(3)]
    lengths = [prefix_len + n for n in suffixes]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    want = _sdpa_masked(*whole, VarlenMeta(cu, max(lengths)), True, dim ** -0.5, window, softcap)
    # shared layout: [prefix][suffix_0][suffix_1][suffix_2]
    packed = [torch.cat([shared[j], *(o[j] for o in own)]) for j in range(3)]
    seg = [prefix_len, *suffixes]
    cu2 = torch.tensor([0, *torch.tensor(seg).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor([[0, 0, 0, 0], [0, prefix_len, prefix_len, prefix_len]])
    got = _sdpa_masked(*packed, VarlenMeta(cu2, max(seg), prefix), True, dim ** -0.5, window, softcap)
    starts = cu[:-1].tolist()
    want_rows = torch.cat([want[s + prefix_len:s + n] for s, n in zip(starts, lengths)])
    assert (got[prefix_len:] - want_rows).abs().max().item() <= 1e-6
    assert (got[:prefix_len] - want[:prefix_len]).abs().max().item() <= 1e-6


def test_kernel_prefix_logic_in_the_interpreter():
    """fp32 through three tile shapes, fp16 through the engine's: prefixes shorter and longer than
    a key block, windows that cut into the prefix, soft-capping, GQA, head_dim 64/128/256."""
    assert len(run_script("prefix_triton_cases.py")) == 4 * len(CASES)


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_prefix_bf16_on_gpu(case):
    if not torch.cuda.is_available():
        pytest.fail("gpu test needs CUDA")
    assert run_case(CASES[case], torch.bfloat16, "cuda", None) <= 0.02
