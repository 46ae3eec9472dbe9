"""The Triton varlen attention kernel against the SDPA reference: on the CPU through Triton's
interpreter (every CI run), and in bf16 on a GPU (marked ``gpu``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_cases import CASES, run_case

HERE = Path(__file__).resolve().parent


def test_kernel_logic_in_the_interpreter():
    """fp32 and fp16: varlen, an empty sequence, GQA, causal or not, left windows, head_dim 64/128."""
    import triton  # noqa: F401 - requirements-dev.txt installs it (the CPU runtime does not need it)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(HERE / "triton_cases.py")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 4 * len(CASES)
    for name, err in errors.items():
        assert err <= (1e-5 if "float32" in name else 5e-3), (name, err)


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_bf16_on_gpu(case):
    if not torch.cuda.is_available():
        pytest.fail("gpu test needs CUDA")
    for tiles in (None, {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
                  {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}):
        assert run_case(CASES[case], torch.bfloat16, "cuda", tiles) <= 0.02
