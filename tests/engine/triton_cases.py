"""Cases for the Triton varlen attention kernel, checked against the SDPA block-diagonal reference.

Run as a script with TRITON_INTERPRET=1 (CPU: Triton's interpreter executes the kernel with numpy)
or imported by the GPU test. Prints one JSON line: the worst error of each case.

Also what the kernel's other case scripts (prefix_triton_cases.py, prefix_cache_triton_cases.py)
and their tests share: random packed inputs, the interpreter's runs, the script's launch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rewardserve.engine.attention import VarlenMeta, _sdpa_masked

# lengths (0 = an empty sequence, as CUDA-graph padding makes), heads, kv heads, head_dim, causal,
# window (keys with |q - k| < window; causal: the left side), logit soft-cap (small caps change
# the result more: tanh bends scores above about cap / 2)
CASES = [
    ((5, 40, 0, 33, 1), 4, 2, 64, True, None, None),
    ((5, 40, 0, 33, 1), 4, 2, 64, False, None, None),
    ((5, 70, 33, 1), 4, 1, 64, True, 16, None),
    ((37, 64, 17), 2, 2, 128, True, None, None),
    ((130,), 2, 1, 64, True, 7, None),
    ((70, 33), 2, 1, 256, True, None, None),
    # Gemma2: soft-capping alone and with a window wider than the tiles (masked left edge,
    # unmasked middle, masked diagonal); 256-wide heads with both
    ((5, 70, 0, 33, 1), 4, 2, 64, True, None, 2.0),
    ((130, 9), 2, 1, 64, True, 40, 1.0),
    ((70, 33), 2, 1, 256, True, 24, 5.0),
    # bidirectional windows (Gemma3 with use_bidirectional_attention): both edges masked
    ((40, 9, 100), 4, 2, 64, False, 35, None),
    ((64, 0, 50), 2, 2, 128, False, 12, 3.0),
]


def random_packed(lengths: Sequence[int], heads: int, kv_heads: int, head_dim: int, gen: torch.Generator):
    """q [T, H, D], k/v [T, Hkv, D] (T = sum(lengths), standard normal) and cu [S + 1] int32."""
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim, generator=gen)
    k, v = (torch.randn(total, kv_heads, head_dim, generator=gen) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def run_case(case, dtype: torch.dtype, device: str, tiles: dict | None) -> float:
    from rewardserve.engine import triton_attention

    lengths, heads, kv_heads, head_dim, causal, window, softcap = case
    q, k, v, cu = random_packed(lengths, heads, kv_heads, head_dim, torch.Generator().manual_seed(sum(lengths)))
    want = _sdpa_masked(q, k, v, VarlenMeta(cu, max(lengths)), causal, head_dim ** -0.5, window, softcap)
    q, k, v, cu = (x.to(device) for x in (q.to(dtype), k.to(dtype), v.to(dtype), cu))
    got = triton_attention.launch(q, k, v, cu, max(lengths), is_causal=causal, scale=head_dim ** -0.5,
                                  window=window, softcap=softcap, tiles=tiles)
    return (got.float().cpu() - want).abs().max().item()


def patch_interpreter() -> None:
    """Triton 3.6's interpreter turns loop bounds into ints with int(array of shape [1]), which
    numpy >= 2.4 refuses; take the single element instead."""
    import numpy as np
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
    interp._patch_lang_tensor = patched


def interpreter_errors(run: Callable[[object, torch.dtype, str, dict | None], float], cases: Sequence) -> dict:
    """The worst error of each case on the CPU ("dtype/tiles/case" -> error), run(case, dtype,
    device, tiles) as each script's run_case. fp32 through every tile shape (the masking and loop
    logic); fp16 through the engine's tiles (the 16-bit load/dot path) - the interpreter is slow,
    and the CI machine has 2 cores."""
    patch_interpreter()
    # Small tiles (several key blocks per case); key blocks narrower and wider than query tiles.
    # "default": the tiles the engine launches (pick_tiles; 256-wide heads: HEAD_DIM_256_TILES).
    tiles = {"m32n16": {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
             "m16n32": {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}, "default": None}
    runs = [(torch.float32, name) for name in tiles] + [(torch.float16, "default")]
    return {f"{dtype}/{name}/{i}": run(case, dtype, "cpu", tiles[name]) for dtype, name in runs
            for i, case in enumerate(cases)}


def run_script(name: str) -> dict:
    """Run the case script tests/engine/<name> under TRITON_INTERPRET=1 (a fresh process: the
    variable is read when triton is imported) and return the errors it printed, checked against
    the interpreter's tolerances (fp32: 1e-5, fp16: 5e-3)."""
    import triton  # noqa: F401 - requirements-dev.txt installs it (the CPU runtime does not need it)
    here = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, str(here / name)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600, cwd=here)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    for key, err in errors.items():
        assert err <= (1e-5 if "float32" in key else 5e-3), (key, err)
    return errors


if __name__ == "__main__":
    print(json.dumps(interpreter_errors(run_case, CASES)))
    sys.exit(0)
