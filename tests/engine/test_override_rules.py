"""The two rules the engine owns alone: the step-tag override order in ChatReward, and the task
of a request that names none. Each test failed before the rule had one owner (82b7e18)."""
from __future__ import annotations

import json

import pytest

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.types import ChatInput, PoolingParams, PoolingTask, PoolingType

CONVERSATION = ChatInput(messages=({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}))


def engine_with(model_dir, pooler_config: dict) -> Engine:
    model = ModelConfig(model=str(model_dir), dtype="float32", pooler_config=json.dumps(pooler_config))
    return Engine(EngineConfig(model=model, runner=RunnerConfig(device="cpu")))


@pytest.fixture(scope="module")
def marks(demo_engine) -> tuple[list[int], int, int]:
    """The rendered conversation's ids and two token ids in it: <|im_end|> and <|im_start|>."""
    tok = demo_engine.core.tokenizer
    ids = tok.render_chat(CONVERSATION)
    return ids, tok.token_id("<|im_end|>"), tok.token_id("<|im_start|>")


def test_a_server_step_tag_makes_chat_reward_score_steps(demo_model_dir, marks):
    ids, end, _ = marks
    engine = engine_with(demo_model_dir, {"step_tag_id": end})  # the demo model has no step tag of its own
    result = engine.chat_reward([CONVERSATION])[0]
    assert [s.position for s in result.step_scores] == [i for i, t in enumerate(ids) if t == end]
    outcome = engine.encode([ids], task="classify", params=PoolingParams(use_activation=False))[0]
    assert result.score == pytest.approx(float(outcome.data[0]), abs=1e-5)  # the last token's raw reward


def test_the_request_step_tag_wins_over_the_server(demo_model_dir, marks):
    ids, end, start = marks
    engine = engine_with(demo_model_dir, {"step_tag_id": end})
    result = engine.chat_reward([CONVERSATION], PoolingParams(step_tag_id=start))[0]
    assert [s.position for s in result.step_scores] == [i for i, t in enumerate(ids) if t == start]


def test_no_task_follows_the_configured_pooling(demo_model_dir, marks):
    ids, end, _ = marks
    engine = engine_with(demo_model_dir, {"pooling_type": "STEP", "step_tag_id": end})
    result = engine.encode([ids])[0]
    assert result.task == PoolingTask.TOKEN_CLASSIFY
    assert result.pooled_positions == [i for i, t in enumerate(ids) if t == end]


def test_no_task_is_classify_for_a_reward_model_and_the_result_says_so(demo_engine):
    assert demo_engine.encode([[5, 6, 7]])[0].task == PoolingTask.CLASSIFY
    assert demo_engine.encode([[5, 6, 7]], params=PoolingParams(pooling_type=PoolingType.ALL))[0].task == \
        PoolingTask.TOKEN_CLASSIFY
