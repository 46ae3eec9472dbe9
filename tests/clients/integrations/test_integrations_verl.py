"""veRL's async compute_score against a live server: the raw reward of the prompt (from
extra_info) plus the response, concurrent calls, and loud failures."""
from __future__ import annotations

import asyncio

import pytest

from rewardserve_client import InvalidArgumentError, RewardClient
from rewardserve_client.integrations.verl import make_compute_score

pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "What is 2+2?"}]


async def test_compute_score_is_the_raw_reward_of_prompt_and_response(live_server):
    compute_score = make_compute_score(live_server.target)
    answers = ["4", "The answer is 4.", "5", "four"] * 2
    results = await asyncio.gather(*(compute_score("gsm8k", a, "4", {"prompt": PROMPT}) for a in answers))
    with RewardClient(live_server.target) as client:
        want = client.chat_reward([PROMPT + [{"role": "assistant", "content": a}] for a in answers]).scores
    assert [r["score"] for r in results] == pytest.approx(want, abs=1e-6)
    assert all(r["rm_num_tokens"] > 0 and r["rm_truncated"] == 0.0 for r in results)
    text_prompt = await make_compute_score(live_server.target, return_dict=False)(
        "gsm8k", "4", "4", {"prompt": "What is 2+2?"})
    assert text_prompt == pytest.approx(want[0], abs=1e-6)
    await compute_score.clients.aclose()


async def test_policy_artefacts_are_stripped_and_failures_raise(live_server):
    compute_score = make_compute_score(live_server.target, policy_tokenizer="llama", return_dict=False)
    clean = await compute_score("ds", "4", None, {"prompt": PROMPT})
    assert await compute_score("ds", "4<|eot_id|><|finetune_right_pad_id|>", None, {"prompt": PROMPT}) == clean
    with pytest.raises(InvalidArgumentError, match=r"extra_info\['prompt'\]: compute_score needs"):
        await compute_score("ds", "4", None, {})
    with pytest.raises(InvalidArgumentError, match="unknown role"):
        await compute_score("ds", "4", None, {"prompt": [{"role": "robot", "content": "x"}]})
    await compute_score.clients.aclose()
