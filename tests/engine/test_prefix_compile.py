"""torch.compile of the packed forward with prefix reuse: one graph for every batch, as without
reuse (issue 18: the [2, S] prefix region's S was specialised at 1, so a one-sequence batch
compiled a second graph and warm-up took twice as long). CPU: the Triton op in the interpreter
(prefix_compile_cases.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")  # the case script's checkpoint builder
pytest.importorskip("triton")        # requirements-dev.txt installs it (the CPU runtime does not need it)


def test_reuse_compiles_one_graph_like_no_reuse():
    here = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, str(here / "prefix_compile_cases.py")],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=900, cwd=here)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["no_reuse_graphs"] == 1, got
    assert got["reuse_graphs"] == got["no_reuse_graphs"], got
    assert got["cache_graphs"] == got["no_reuse_graphs"], got
