"""Shared-prefix reuse through the offline Engine (the server's code path), fp32 on the CPU: with
reuse on, every score equals --no-prefix-reuse within 1e-5, for each decoder family (Llama,
Qwen2 with a sliding-window layer, Qwen3, Mistral with a window, Gemma2 with soft-capping and a
window) and each pooling type (LAST, MEAN, ALL, STEP), for a process RM's ChatReward step scores
and a math-shepherd STEP model, and for text whose responses tokenize into the prompt's last
token. Every case also checks that reuse happened (reused_tokens), so it cannot pass vacuously;
and models that cannot reuse (bidirectional, length-dependent RoPE) run without it.
"""
from __future__ import annotations

import random

import pytest
import torch
import transformers as tf

from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.types import ChatInput, PoolingParams, PoolingType, TextInput
from test_decoders import BUILDERS
from test_reward_heads import _qwen2_rm_checkpoint
from tiny_decoders import SIZES, STEP_TAG_ID, VOCAB

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2")
TOL = 1e-5


def engines(folder, pooler_config: str = "") -> tuple[Engine, Engine]:
    """(reuse on, reuse off) on the same checkpoint, fp32 on the CPU."""
    def make(reuse: bool) -> Engine:
        return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="float32", pooler_config=pooler_config),
                                   runner=RunnerConfig(device="cpu"), prefix=PrefixConfig(prefix_reuse=reuse)))
    return make(True), make(False)


def grpo_inputs(seed: int = 0) -> list[list[int]]:
    """Two groups (prompts of 70 and 100 tokens; responses of 1..40 tokens), a sequence sharing
    only 40 tokens of the first prompt, and an unrelated one; step tags in prompts and responses,
    one on the first prompt's last token (the boundary), interleaved as streams would send them."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [STEP_TAG_ID if rng.random() < 0.1 else rng.randrange(4, VOCAB) for _ in range(n)]
    a, b = ids(69) + [STEP_TAG_ID], ids(100)
    group_a = [a + ids(n) + [STEP_TAG_ID] for n in (0, 1, 8, 16, 39)]
    group_b = [b + ids(n) + [STEP_TAG_ID] for n in (2, 29)]
    return [group_a[0], group_b[0], a[:40] + ids(30), group_a[1], ids(50), group_a[2], group_b[1], *group_a[3:]]


POOLINGS = {
    "LAST": ("classify", PoolingParams(use_activation=False)),
    "MEAN": ("embed", PoolingParams(pooling_type=PoolingType.MEAN, normalize=False)),
    "ALL": ("token_embed", PoolingParams(normalize=False)),
    "STEP": ("token_classify", PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=STEP_TAG_ID)),
}


def assert_same(on: list, off: list) -> None:
    """Same results (data and logits ≤ TOL, same pooled positions); reuse happened in ``on`` only."""
    assert len(on) == len(off)
    for a, b in zip(on, off):
        assert a.pooled_positions == b.pooled_positions and a.num_tokens == b.num_tokens
        assert a.data.shape == b.data.shape
        assert (a.data - b.data).abs().max().item() <= TOL, (a.index, (a.data - b.data).abs().max().item())
        if b.logits is not None:
            assert (a.logits - b.logits).abs().max().item() <= TOL
    assert sum(r.reused_tokens for r in on) > 0
    assert sum(r.reused_tokens for r in off) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_pooling_type_equals_no_reuse(ckpt, family):
    BUILDERS[family]().save_pretrained(str(ckpt))
    on, off = engines(ckpt)
    assert on.core.prefix is not None and off.core.prefix is None
    inputs = grpo_inputs()
    for name, (task, params) in POOLINGS.items():
        got, want = on.encode(inputs, task, params), off.encode(inputs, task, params)
        assert_same(got, want)
    # group a: 64 shared tokens (70 floored to blocks of 16) reused by 4 of its 5 members;
    # group b: 96 reused once; the 40-token sharer is not worth a group of its own
    assert [r.reused_tokens for r in got] == [0, 0, 0, 64, 0, 64, 96, 64, 64]


def test_process_reward_model_chat_group(ckpt):
    """A Qwen2 PRM's ChatReward group: one prompt, four responses with step tags; step scores and
    the outcome score equal the no-reuse path."""
    _qwen2_rm_checkpoint(ckpt, "Qwen2ForProcessRewardModel", 2)
    on, off = engines(ckpt)
    system = {"role": "system", "content": "You are a careful grader of arithmetic. " * 4}
    user = {"role": "user", "content": "Add 2 and 2, then double it, then subtract three and explain each step."}
    answers = ["2 + 2 = 4<extra_0>4 * 2 = 8<extra_0>8 - 3 = 5<extra_0>",
               "2 + 2 = 5<extra_0>5 * 2 = 10<extra_0>",
               "4<extra_0>8<extra_0>5<extra_0>The answer is 5.<extra_0>",
               "I do not know."]
    chats = [ChatInput(messages=(system, user, {"role": "assistant", "content": a})) for a in answers]
    got, want = on.chat_reward(chats), off.chat_reward(chats)
    for a, b in zip(got, want):
        assert a.score == pytest.approx(b.score, abs=TOL)
        assert [s.position for s in a.step_scores] == [s.position for s in b.step_scores]
        for s, t in zip(a.step_scores, b.step_scores):
            assert s.score == pytest.approx(t.score, abs=TOL)
    assert sum(len(r.step_scores) for r in got) == 9
    assert sum(r.reused_tokens for r in got) > 0 and sum(r.reused_tokens for r in want) == 0


def test_math_shepherd_step_rewards(ckpt):
    """A causal LM served as a PRM (STEP pooling + returned_token_ids), Mistral with a window."""
    tf.MistralForCausalLM(tf.MistralConfig(**SIZES, sliding_window=16)).save_pretrained(str(ckpt))
    on, off = engines(ckpt, '{"returned_token_ids": [14, 16], "step_tag_id": %d}' % STEP_TAG_ID)
    inputs = grpo_inputs(seed=1)
    assert_same(on.encode(inputs, "token_classify"), off.encode(inputs, "token_classify"))


def test_responses_that_tokenize_into_the_prompt(ckpt):
    """Text inputs whose responses merge with the prompt's last characters ("...go th" + "e end"
    → "the"): the shared prefix is found in token ids, short of the prompt's own tokens; the
    scores still equal the no-reuse path."""
    from rewardserve.engine.prefix import common_prefix

    BUILDERS["qwen3"]().save_pretrained(str(ckpt))
    on, off = engines(ckpt)
    prompt = "The quick brown fox and the lazy dog met at the river, and the fox wanted to go th"
    texts = [TextInput(prompt * 2 + tail) for tail in ("e end.", "is way", "e river bank", "ere and back")]
    alone = on.core.tokenizer.encode(prompt * 2)
    ids = [on.core.tokenizer.encode(t.text) for t in texts]
    assert min(common_prefix(alone, i) for i in ids) < len(alone)  # the boundary tokenizes differently
    assert_same(on.encode(texts, "classify"), off.encode(texts, "classify"))


def test_chat_reward_group_of_a_seq_cls_model(ckpt):
    """ChatReward with a shared system + user prompt (rendered by the chat template): one
    prefix, the rewards of the no-reuse path."""
    BUILDERS["llama"]().save_pretrained(str(ckpt))
    on, off = engines(ckpt)
    prompt = ({"role": "system", "content": "Grade the answer. " * 8}, {"role": "user", "content": "What is 6 x 7?"})
    chats = [ChatInput(messages=(*prompt, {"role": "assistant", "content": a})) for a in ("42", "It is 42.", "41")]
    got, want = on.chat_reward(chats), off.chat_reward(chats)
    for a, b in zip(got, want):
        assert a.score == pytest.approx(b.score, abs=TOL)
    assert [r.reused_tokens > 0 for r in got] == [False, True, True]


def test_models_that_cannot_reuse_run_without_it(tmp_path, ckpt, caplog):
    from test_encoders import bert_checkpoint

    caplog.set_level("INFO", logger="rewardserve.engine.prefix")
    bert = engines(bert_checkpoint(tmp_path / "bert", cls_head=True))[0]
    assert bert.core.prefix is None and "bidirectional" in caplog.text
    tf.LlamaForSequenceClassification(tf.LlamaConfig(**SIZES, num_labels=1, rope_scaling={
        "rope_type": "dynamic", "factor": 2.0})).save_pretrained(str(ckpt))
    dynamic = engines(ckpt)[0]
    assert dynamic.core.prefix is None and "length-dependent RoPE" in caplog.text
    results = dynamic.encode(grpo_inputs(), "classify")
    assert all(r.reused_tokens == 0 for r in results)


def test_no_prefix_reuse_runs_the_plain_packed_forward(ckpt):
    """--no-prefix-reuse: the forward gets the plain packing (ids, positions, cu_seqlens,
    max_seqlen) of whole sequences, as before prefix reuse existed; with reuse, a batch that
    shares prompts also gets the prefix table and fewer tokens."""
    BUILDERS["qwen3"]().save_pretrained(str(ckpt))
    on, off = engines(ckpt)
    calls = {}

    def recorder(name):
        def wrap(inner):
            def forward(ids, *rest):
                calls[name] = (ids.shape[0], len(rest))
                return inner(ids, *rest)
            return forward
        return wrap
    on.core.wrap_forward(recorder("on"))
    off.core.wrap_forward(recorder("off"))
    inputs = grpo_inputs()
    on.encode(inputs, "classify"), off.encode(inputs, "classify")
    total = sum(map(len, inputs))
    assert calls["off"] == (total, 3)
    assert calls["on"] == (total - 64 * 4 - 96, 4)
    assert off.core.runner.stats["prefix_reuse"] is False and on.core.runner.stats["prefix_reuse"] is True
