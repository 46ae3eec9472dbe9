"""The Triton varlen attention kernel against the SDPA reference: on the CPU through Triton's
interpreter (every CI run), and in bf16 on a GPU (marked ``gpu``)."""
from __future__ import annotations

import pytest
import torch

from triton_cases import CASES, run_case, run_script


def test_kernel_logic_in_the_interpreter():
    """fp32 and fp16: varlen, an empty sequence, GQA, causal or not, sliding windows (causal: left;
    bidirectional: both sides), logit soft-capping alone and with windows, head_dim 64/128/256,
    with key blocks narrower and wider than query tiles and with the tiles the engine picks."""
    errors = run_script("triton_cases.py")
    assert len(errors) == 4 * len(CASES)  # fp32 x 3 tile shapes, fp16 x the engine's tiles


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_bf16_on_gpu(case):
    if not torch.cuda.is_available():
        pytest.fail("gpu test needs CUDA")
    head_dim = CASES[case][3]
    for tiles in (None, {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
                  {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}):
        if tiles and head_dim > 128:  # 256-wide: 3 stages of 64+ keys exceed shared memory (see pick_tiles)
            tiles = {**tiles, "BLOCK_N": 32}
        assert run_case(CASES[case], torch.bfloat16, "cuda", tiles) <= 0.02


def test_backend_choice(monkeypatch):
    """auto: flash_attn when installed, else our Triton kernel on CUDA; a CUDA kernel on the CPU is an error."""
    from rewardserve.engine import attention

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert attention.resolve_backend("auto", cpu) == "sdpa"
    for name in ("triton", "torch", "flash_attn"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            attention.resolve_backend(name, cpu)
    monkeypatch.setattr(attention, "has_flash_attn", lambda: False)
    assert attention.resolve_backend("auto", cuda) == "triton"
    assert attention.resolve_backend("torch", cuda) == "torch"
    monkeypatch.setattr(attention.triton_attention, "is_available", lambda: False)
    assert attention.resolve_backend("auto", cuda) == "torch"
    with pytest.raises(ValueError, match="triton package is not installed"):
        attention.resolve_backend("triton", cuda)
    monkeypatch.setattr(attention, "has_flash_attn", lambda: True)
    assert attention.resolve_backend("auto", cuda) == "flash_attn"
