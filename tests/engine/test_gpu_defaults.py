"""Fast by default on a GPU: unset ``compile`` / ``cuda_graphs`` mean on for CUDA, off on CPU.

The rule is ``RunnerConfig.for_device`` (checked here on the CPU for both device types); the
``gpu``-marked test checks that an engine on a real CUDA device compiles and captures graphs
without being asked.
"""
from __future__ import annotations

import pytest
import torch

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.service.cli import parse_serve_config


def test_unset_means_on_for_cuda_and_off_on_cpu():
    runner = RunnerConfig()
    assert (runner.compile, runner.cuda_graphs) == (None, None)
    assert (runner.for_device("cuda").compile, runner.for_device("cuda").cuda_graphs) == (True, True)
    assert (runner.for_device("cpu").compile, runner.for_device("cpu").cuda_graphs) == (False, False)


def test_an_explicit_choice_wins_on_either_device():
    off = RunnerConfig(compile=False, cuda_graphs=False).for_device("cuda")
    assert (off.compile, off.cuda_graphs) == (False, False)
    graphs_only = RunnerConfig(compile=False).for_device("cuda")
    assert (graphs_only.compile, graphs_only.cuda_graphs) == (False, True)
    on = RunnerConfig(compile=True, cuda_graphs=True).for_device("cpu")
    assert (on.compile, on.cuda_graphs) == (True, True)  # the runner then says they are CUDA-only


def test_the_serve_flags_set_or_clear_them():
    assert parse_serve_config(["serve"]).engine.runner.compile is None
    runner = parse_serve_config(["serve", "--no-compile", "--no-cuda-graphs"]).engine.runner
    assert (runner.compile, runner.cuda_graphs) == (False, False)
    runner = parse_serve_config(["serve", "--compile"]).engine.runner
    assert (runner.compile, runner.cuda_graphs) == (True, None)


def test_the_cpu_engine_stays_eager(demo_engine):
    runner = demo_engine.core.runner
    assert runner.device.type == "cpu"
    assert (runner.want_compile, runner.want_graphs) == (False, False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_engine_compiles_and_captures_by_default(demo_model_dir):
    from rewardserve.engine.engine import Engine

    engine = Engine(EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cuda")))
    runner = engine.core.runner
    assert (runner.want_compile, runner.want_graphs) == (True, True)
    engine.encode(["hello world"], task="classify")  # the first batch warms up: compile, then capture
    assert runner.stats["compile"] is True and runner.stats["cuda_graphs"] is True, runner.stats
