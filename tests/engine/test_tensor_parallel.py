"""Tensor parallel end to end on the CPU (gloo): ``Engine.from_model(tensor_parallel_size=2)``
and ``rewardserve encode --tensor-parallel-size 2`` on the demo model (a tiny Qwen3 seq-cls)
give the numbers of one rank within 1e-5 for classify, token_classify, embed and step scores;
unsupported setups are refused in one line before any rank starts (a rank that dies:
test_tensor_parallel_failures.py). (Every family and reward head is checked at the model level in
tests/engine/models/test_sharded.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from rewardserve.engine.config import ParallelConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.errors import EngineError
from rewardserve.engine.types import PoolingParams, PoolingType

TEXTS = ["a short one", "step one <extra_0> step two <extra_0> and the end <extra_0>",
         "a somewhat longer text, so the batch holds sequences of mixed lengths " * 3, "x"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tp_engine(demo_model_dir):
    engine = Engine.from_model(str(demo_model_dir), device="cpu", dtype="float32", tensor_parallel_size=2)
    yield engine
    engine.close()


def _step_params(engine: Engine) -> PoolingParams:
    step = engine.core.tokenizer.hf.convert_tokens_to_ids("<extra_0>")
    return PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=step)


@pytest.mark.parametrize("task, step", [("classify", False), ("token_classify", False), ("embed", False),
                                        ("token_embed", False), ("token_classify", True)])
def test_two_ranks_equal_one(tp_engine, demo_engine, task, step):
    params = _step_params(demo_engine) if step else None
    want = demo_engine.encode(TEXTS, task=task, params=params)
    got = tp_engine.encode(TEXTS, task=task, params=params)
    for g, w in zip(got, want):
        assert g.pooled_positions == w.pooled_positions and g.data.shape == w.data.shape
        assert torch.allclose(g.data, w.data, rtol=0, atol=TOLERANCE)
    if step:
        assert [len(g.pooled_positions) for g in got] == [0, 3, 0, 0]


def test_chat_reward_on_two_ranks(tp_engine, demo_engine):
    chats = [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    got, want = tp_engine.chat_reward(chats)[0], demo_engine.chat_reward(chats)[0]
    assert abs(got.score - want.score) <= TOLERANCE


def test_one_group_per_process(tp_engine, demo_model_dir):
    with pytest.raises(EngineError, match="already belongs to a torch.distributed group"):
        Engine.from_model(str(demo_model_dir), device="cpu", tensor_parallel_size=2)


def test_unsupported_setups_are_refused_before_any_rank_starts(tmp_path, demo_model_dir):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(EngineError, match="--tensor-parallel-size 2: encoder models"):
        Engine.from_model(str(bert), device="cpu", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="--tensor-parallel-size must be at least 1"):
        ParallelConfig(tensor_parallel_size=0)
