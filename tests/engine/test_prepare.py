"""prepare(): tokenization paths, appended reward token, truncation and validation."""
from __future__ import annotations

import pytest

from rewardserve.engine.errors import InvalidInputError
from rewardserve.engine.pooling import ResolvedPooling, server_params
from rewardserve.engine.prepare import Limits, prepare
from rewardserve.engine.types import PoolingParams, PoolingTask, PoolingType, TextInput, TokensInput

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


# ---- limits before work (issue 20) -------------------------------------------------------------

def _long_text(words: int, seed: int = 20) -> str:
    import random
    rng = random.Random(seed)
    vocab = ["the", "answer", "is", "forty-two,", "because", "7", "times", "6", "equals", "42.", "Step", "1:",
             "hello", "world!", "résumé", "naïve", "\n", "tokens", "x" * 30]
    return " ".join(rng.choice(vocab) for _ in range(words))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("keep", [-1, 50])
def test_cutting_long_text_first_equals_tokenize_then_truncate(demo_engine, side, keep):
    from rewardserve.engine.prepare import resolve_max_chars
    from rewardserve.engine.tokenizer import longest_token_chars

    tokenizer = demo_engine.core.tokenizer
    longest = longest_token_chars(tokenizer)
    cut = Limits(400, 64, max_chars=resolve_max_chars(0, 64, longest))
    uncut = Limits(400, 64)
    text = TextInput(_long_text(4 * cut.max_chars))  # far longer than can fit: it is cut first
    params = PoolingParams(truncate_prompt_tokens=keep, truncation_side=side)
    expected = prepare([text], PLAN, params, tokenizer, uncut)[0]
    got = prepare([text], PLAN, params, tokenizer, cut)[0]
    assert got.token_ids == expected.token_ids and got.truncated and expected.truncated


def test_text_over_the_char_limit_is_refused_before_tokenizing():
    class NoTokenizing:
        def encode(self, text, **kwargs):
            assert len(text) <= 1000, "tokenized a text that cannot fit"
            return [1]
    with pytest.raises(InvalidInputError, match=r"inputs\[1\]: text has 1001 characters, more than the limit of 1000"):
        prepare(["ok", "y" * 1001], PLAN, PoolingParams(), NoTokenizing(), Limits(400, 8, max_chars=1000))


@pytest.mark.parametrize("entry", ["prepare", "prepare_chat"])
def test_item_count_is_checked_before_any_item_is_read(demo_engine, entry):
    class Unreadable(list):
        def __iter__(self):
            raise AssertionError("read an item of a request over the item limit")

        def __getitem__(self, index):
            raise AssertionError("read an item of a request over the item limit")
    core = demo_engine.core
    field = "inputs" if entry == "prepare" else "conversations"
    too_many = core.limits.max_items + 1
    with pytest.raises(InvalidInputError, match=f"{field}: has {too_many} items, more than the limit"):
        if entry == "prepare":
            core.prepare(Unreadable([[1]] * too_many), None, None)
        else:
            core.prepare_chat(Unreadable([None] * too_many), None)


def test_token_ids_are_counted_before_they_are_copied():
    class Counted(list):
        def __iter__(self):
            raise AssertionError("copied the ids of an input that cannot fit")
    with pytest.raises(InvalidInputError, match=r"inputs\[0\]: input has 100 tokens, more than max_model_len 8"):
        prepare([TokensInput(Counted([1] * 100))], PLAN, PoolingParams(), None, Limits(400, 8))
    items = prepare([list(range(100))], PLAN, PoolingParams(truncate_prompt_tokens=8), None, Limits(400, 8))
    assert items[0].token_ids == list(range(92, 100)) and items[0].truncated


def test_conversation_over_the_char_limit_is_refused_before_rendering(demo_engine):
    from rewardserve.engine.types import ChatInput

    chat = ChatInput(messages=({"role": "user", "content": "z" * 600}, {"role": "assistant", "content": "z" * 500}))
    with pytest.raises(InvalidInputError, match=r"conversations\[0\]: conversation has 1100 characters"):
        prepare([chat], PLAN, PoolingParams(), demo_engine.core.tokenizer, Limits(400, 8, max_chars=1000),
                "conversations")
