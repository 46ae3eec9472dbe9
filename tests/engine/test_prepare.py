"""prepare(): tokenization paths, appended reward token, truncation and validation."""
from __future__ import annotations

import pytest

from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.pooling import ResolvedPooling, server_params
from rewardserve.engine.prepare import Limits, prepare
from rewardserve.engine.types import PoolingParams, PoolingTask, PoolingType, TextInput

PLAN = ResolvedPooling(PoolingTask.CLASSIFY, PoolingType.LAST, "identity", False, None, None, None)


def test_reward_token_is_appended_to_text_not_to_token_ids(demo_engine):
    tokenizer = demo_engine.core.tokenizer
    limits = Limits(vocab_size=400, max_model_len=64, append_token_id=3)
    items = prepare([TextInput("hello"), [5, 6]], PLAN, PoolingParams(), tokenizer, limits)
    assert items[0].token_ids == tokenizer.encode("hello") + [3]
    assert items[0].positions == [len(items[0].token_ids) - 1]  # the reward is read at the token
    assert items[1].token_ids == [5, 6]


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_the_reward_token_last(demo_engine, side):
    tokenizer = demo_engine.core.tokenizer
    limits = Limits(vocab_size=400, max_model_len=64, append_token_id=3)
    text = TextInput("a longer text than four tokens")
    body = tokenizer.encode(text.text)
    items = prepare([text], PLAN, PoolingParams(truncate_prompt_tokens=4, truncation_side=side), tokenizer, limits)
    kept = [*body, 3][-4:] if side == "left" else [*body[:3], 3]
    assert items[0].token_ids == kept and items[0].truncated
    assert items[0].positions == [3]


def test_truncation_limit_is_checked():
    with pytest.raises(InvalidInputError, match="truncation.truncate_prompt_tokens: must be -1 or in 1..8"):
        prepare([[1] * 4], PLAN, PoolingParams(truncate_prompt_tokens=9), None, Limits(400, 8))
    items = prepare([[1] * 12], PLAN, PoolingParams(truncate_prompt_tokens=-1), None, Limits(400, 8))
    assert items[0].num_tokens == 8 and items[0].truncated


def test_text_without_tokenizer_is_refused():
    with pytest.raises(InvalidInputError, match=r"inputs\[0\]: this server has no tokenizer"):
        prepare(["text"], PLAN, PoolingParams(), None, Limits(400, 8))


def test_server_pooler_config_is_checked():
    assert server_params({"pooling_type": "mean", "normalize": False}).pooling_type == PoolingType.MEAN
    with pytest.raises(ValueError, match="unknown --pooler-config key"):
        server_params({"pooling": "LAST"})
    with pytest.raises(ValueError, match="must be token ids"):
        server_params({"step_tag_id": "<extra_0>"})
