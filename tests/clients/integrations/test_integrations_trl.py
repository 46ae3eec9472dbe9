"""The TRL reward functions against a live server: one float per completion in order, None (and a
warning) for an item the server refuses, policy token ids re-templated, async twin identical."""
from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from transformers import AutoTokenizer

from rewardserve_client import RewardClient, UnavailableError
from rewardserve_client.integrations.trl import AsyncRewardServeRewardFunc, RewardServeRewardFunc

pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "What is 2+2?"}]
ANSWERS = ["4", "The answer is 4.", "5"]


def expected(target: str) -> list[float]:
    with RewardClient(target) as client:
        return client.chat_reward([PROMPT + [{"role": "assistant", "content": a}] for a in ANSWERS]).scores


def test_sync_reward_func_scores_in_order_with_none_for_a_refused_item(live_server, caplog):
    reward = RewardServeRewardFunc(live_server.target, name="rm")
    completions = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    completions.insert(1, [{"role": "robot", "content": "beep"}])
    with caplog.at_level(logging.WARNING):
        scores = reward(prompts=[PROMPT] * 4, completions=completions)
    reward.close()
    want = expected(live_server.target)
    assert scores[1] is None and scores[0] is not None
    assert [scores[0], scores[2], scores[3]] == pytest.approx(want, abs=1e-6)
    assert reward.__name__ == "rm" and "completion 1" in caplog.text and "unknown role 'robot'" in caplog.text


def test_completion_ids_of_the_policy_score_like_the_text(live_server, llama_dir):
    llama = AutoTokenizer.from_pretrained(str(llama_dir))
    eot = llama.convert_tokens_to_ids("<|eot_id|>")
    ids = [llama(a, add_special_tokens=False)["input_ids"] + [eot] for a in ANSWERS]
    reward = RewardServeRewardFunc(live_server.target, policy_tokenizer="llama")
    scores = reward(prompts=[PROMPT] * 3, completions=[[{"role": "assistant", "content": "ignored"}]] * 3,
                    completion_ids=ids)
    reward.close()
    assert scores == pytest.approx(expected(live_server.target), abs=1e-6)


def test_plain_text_prompts_are_scored_as_prompt_plus_completion(live_server):
    reward = RewardServeRewardFunc(live_server.target)
    scores = reward(prompts=["2+2 =", "2+2 ="], completions=[" 4", " 5"], ground_truth=["4", "4"])
    reward.close()
    with RewardClient(live_server.target) as client:
        want = client.chat_reward([{"rendered": "2+2 = 4"}, {"rendered": "2+2 = 5"}]).scores
    assert scores == pytest.approx(want, abs=1e-6)


async def test_async_reward_func_matches_the_sync_one(live_server):
    reward = AsyncRewardServeRewardFunc(live_server.target, name="rm_async")
    assert asyncio.iscoroutinefunction(reward) and inspect.iscoroutinefunction(reward.as_function())
    completions = [[{"role": "assistant", "content": a}] for a in ANSWERS] + [[{"role": "robot", "content": "x"}]]
    scores = await reward.as_function()(prompts=[PROMPT] * 4, completions=completions)
    await reward.aclose()
    assert scores[:3] == pytest.approx(expected(live_server.target), abs=1e-6) and scores[3] is None


def test_a_server_that_cannot_be_reached_raises_instead_of_scoring(unused_target):
    reward = RewardServeRewardFunc(unused_target, timeout=2)
    with pytest.raises(UnavailableError):
        reward(prompts=[PROMPT], completions=["4"])
    reward.close()


@pytest.fixture
def unused_target() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
