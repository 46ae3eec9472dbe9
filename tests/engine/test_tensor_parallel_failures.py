"""Tensor parallel on the CPU (gloo), in its own module: the engine of test_tensor_parallel.py is
closed first (a process belongs to one torch.distributed group at a time). A rank that dies
makes the engine fail at once instead of hanging; a rank whose forward fails on its own fails
that batch with its error (out of memory: split and retried, as on one GPU) and the group keeps
computing; a rank whose probe fails loses the group; ``rewardserve encode --tensor-parallel-size 2``
starts its own ranks and prints what one rank computes.

Failures are injected on rank 1 only, through ``TensorParallelGroup.wrap_forward`` (a message
over its pipe). The collective timeout is 60 s: a rank 0 left waiting in an all-reduce would
fail with gloo's timeout, not with rank 1's error."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.errors import ItemFailedError
from rewardserve.engine.tensor_parallel import RankLost

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


class FailForward:
    """A forward wrapper (pickled to rank 1): its next ``times`` calls raise ``kind`` ("oom":
    torch.OutOfMemoryError, else RuntimeError) with ``message``, ``when`` "before" the forward
    (no all-reduce issued yet) or "after" it (all issued); later calls run the forward."""

    def __init__(self, kind: str, message: str, times: int, when: str):
        self.kind, self.message, self.times, self.when = kind, message, times, when

    def __call__(self, forward):
        left = [self.times]

        def wrapped(*args):
            if left[0] <= 0:
                return forward(*args)
            left[0] -= 1
            if self.when == "after":
                forward(*args)
            raise (torch.OutOfMemoryError if self.kind == "oom" else RuntimeError)(self.message)

        return wrapped


def _tp_engine(model_dir) -> Engine:
    return Engine(EngineConfig(model=ModelConfig(model=str(model_dir), dtype="float32"), runner=RunnerConfig(device="cpu"),
                               scheduler=SchedulerConfig(),
                               parallel=ParallelConfig(tensor_parallel_size=2, tensor_parallel_timeout_s=60)))


def _assert_equal(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.allclose(g.data, w.data, rtol=0, atol=TOLERANCE)


def test_a_rank_failing_a_batch_fails_that_batch_only(demo_model_dir, demo_engine):
    want = demo_engine.encode(TEXTS, task="classify")
    engine = _tp_engine(demo_model_dir)
    try:
        group = engine.core.tensor_parallel
        for when in ("before", "after"):  # every all-reduce still owed by rank 1, or none
            splits = engine.loop.num_oom_splits
            group.wrap_forward(1, FailForward("oom", "CUDA out of memory (injected)", 1, when))
            _assert_equal(engine.encode(TEXTS, task="classify"), want)  # split in two, each half computed
            assert engine.loop.num_oom_splits == splits + 1
        splits = engine.loop.num_oom_splits
        engine.core.runner.wrap_forward(FailForward("oom", "CUDA out of memory (injected)", 1, "before"))  # rank 0
        _assert_equal(engine.encode(TEXTS, task="classify"), want)  # rank 1 issued its all-reduces alone
        assert engine.loop.num_oom_splits == splits + 1
        group.wrap_forward(1, FailForward("oom", "CUDA out of memory (injected)", 1, "before"))
        with pytest.raises(ItemFailedError, match="out of memory on a single sequence"):
            engine.encode(["x"], task="classify")  # one sequence: nothing to split
        group.wrap_forward(1, FailForward("runtime", "injected failure", 1, "after"))
        with pytest.raises(RuntimeError, match="^tensor-parallel rank 1 failed: RuntimeError: injected failure$"):
            engine.encode(["x"], task="classify")
        assert group.lost is None
        _assert_equal(engine.encode(TEXTS, task="classify"), want)  # the group still computes
    finally:
        engine.close()


def test_a_rank_failing_its_probe_loses_the_group(demo_model_dir):
    engine = _tp_engine(demo_model_dir)
    try:
        group = engine.core.tensor_parallel
        group.wrap_forward(1, FailForward("runtime", "injected failure", 1, "before"))
        with pytest.raises(RankLost, match="^tensor-parallel rank 1 failed: RuntimeError: injected failure$"):
            engine.core.runner.probe()  # what a server's batch pipeline runs after a failure
        assert group.lost == "tensor-parallel rank 1 failed: RuntimeError: injected failure"
        with pytest.raises(RankLost, match="rank 1 failed: RuntimeError: injected failure"):
            engine.encode(["after"], task="classify")
    finally:
        engine.close()


CATCH_UP = """
import json, sys
import torch, torch.distributed as dist
from torch.distributed import _functional_collectives as fc
from rewardserve.engine.models.sharded import COLLECTIVES, all_reduce
from rewardserve.engine.tensor_parallel import OutOfStep, run_in_step

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
group = dist.group.WORLD
COLLECTIVES.per_forward, COLLECTIVES.width, COLLECTIVES.dtype = 3, 4, torch.float32

def forward(calls, fail_after):  # calls(x): one all-reduce; fails after fail_after of them
    def run():
        x = torch.ones(5, 4)
        for i in range(3):
            if i == fail_after:
                raise torch.OutOfMemoryError("injected")
            x = calls(x)
        return x, torch.zeros(1)
    return run

compiled = lambda x: fc.wait_tensor(fc.all_reduce(x, "sum", group))  # bypasses the Python count, as compiled code
eager = lambda x: all_reduce(x, group)
seq = group._get_sequence_number_for_group
out = {}
def step(name, calls, fail_after, path):
    start = seq()
    try:
        _, error, flags = run_in_step(forward(calls, fail_after), tokens=5, path=path, device=torch.device("cpu"),
                                      rank=0, world=1, group=group)
        out[name] = [seq() - start, type(error).__name__, flags.tolist()]
    except OutOfStep as exc:
        out[name] = ["out of step", type(exc.cause).__name__]
step("compiled before a row counted", compiled, 1, "compiled")
step("compiled ok", compiled, None, "compiled")
step("compiled failing", compiled, 1, "compiled")
step("eager failing", eager, 2, "eager")
step("graph failing", eager, 0, "graph")
print(json.dumps(out))
"""


def test_a_failed_forward_issues_the_all_reduces_it_owes(tmp_path):
    """Each row issues per_forward all-reduces + the failure flag however its forward fails: the
    eager forward's are counted in Python, a compiled one's by the process group's sequence
    number once a row has shown it counts them (before that, and for a CUDA graph: out of step)."""
    done = subprocess.run([sys.executable, "-c", CATCH_UP, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "compiled before a row counted": ["out of step", "OutOfMemoryError"],
        "compiled ok": [4, "NoneType", [0]],
        "compiled failing": [4, "OutOfMemoryError", [1]],
        "eager failing": [4, "OutOfMemoryError", [1]],
        "graph failing": ["out of step", "OutOfMemoryError"],
    }
