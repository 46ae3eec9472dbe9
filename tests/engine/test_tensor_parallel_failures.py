"""Tensor parallel on the CPU (gloo), in its own module: the engine of test_tensor_parallel.py is
closed first (a process belongs to one torch.distributed group at a time). A rank that dies
makes the engine fail at once instead of hanging; ``rewardserve encode --tensor-parallel-size 2``
starts its own ranks and prints what one rank computes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from rewardserve.engine.engine import Engine

TEXTS = ["a short one", "a somewhat longer text, so the batch holds sequences of mixed lengths " * 3, "x"]
TOLERANCE = 1e-5


def test_a_dead_rank_fails_the_engine_at_once(demo_model_dir):
    engine = Engine.from_model(str(demo_model_dir), device="cpu", dtype="float32", tensor_parallel_size=2)
    try:
        assert engine.encode(["before"], task="classify")[0].data.shape == (1,)
        group = engine.core.tensor_parallel
        group.processes[0].kill()                      # rank 1
        deadline = time.monotonic() + 30
        while group.lost is None and time.monotonic() < deadline:  # the watcher notices the death
            time.sleep(0.05)
        assert group.lost == "tensor-parallel rank 1 died (exit code -9)"
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_attempt(engine)), daemon=True)
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "encode hung after a rank died"
        assert isinstance(outcome[0], RuntimeError) and "rank 1 died" in str(outcome[0])
    finally:
        engine.close()


def _attempt(engine: Engine):
    try:
        return engine.encode(["after"], task="classify")
    except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
        return exc


def test_encode_cli_with_two_ranks(demo_model_dir, demo_engine):
    script = shutil.which("rewardserve") or str(Path(sys.executable).parent / "rewardserve")
    stdin = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    done = subprocess.run([script, "encode", "--model", str(demo_model_dir), "--device", "cpu", "--dtype", "float32",
                           "--task", "classify", "--tensor-parallel-size", "2"], input=stdin, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    want = demo_engine.encode(TEXTS, task="classify")
    assert len(out) == len(want)
    for got, expected in zip(out, want):
        assert (torch.tensor(got["data"]) - expected.data).abs().max().item() <= TOLERANCE
