"""The offline Engine on the demo model: packing parity, pooling, activation, errors."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rewardserve.engine.errors import InvalidInputError, UnsupportedTaskError
from rewardserve.engine.types import ChatInput, PoolingParams, PoolingType


def mixed_inputs(n: int = 10, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 2, 300, 17, 64, 250, 5, 128, 33, 199][:n]
    return [[rng.randrange(1, 400) for _ in range(k)] for k in lengths]


def hf_reference(model_dir, sequences: list[list[int]]) -> torch.Tensor:
    """transformers' own padded forward: an independent reference for LAST-token scores."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(map(len, sequences))
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):  # right padding with the pad id, as HF expects
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits  # [B, 1]


def test_packed_batch_equals_each_alone_and_transformers(demo_engine, demo_model_dir):
    seqs = mixed_inputs()
    packed = demo_engine.encode(seqs, task="classify", params=PoolingParams(use_activation=False))
    alone = [demo_engine.encode([s], task="classify", params=PoolingParams(use_activation=False))[0] for s in seqs]
    for p, a in zip(packed, alone):
        assert torch.allclose(p.data, a.data, atol=1e-5, rtol=0)
    reference = hf_reference(demo_model_dir, seqs)
    got = torch.stack([r.data for r in packed])
    assert torch.allclose(got, reference, atol=1e-4, rtol=0), (got - reference).abs().max()
    assert [r.num_tokens for r in packed] == [len(s) for s in seqs]
    assert [r.pooled_positions for r in packed] == [[len(s) - 1] for s in seqs]


def test_batches_are_cut_by_token_budget(demo_model_dir):
    from rewardserve.engine.engine import Engine
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig

    small = Engine(EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                                scheduler=SchedulerConfig(max_num_batched_tokens=310, max_num_seqs=3)))
    seqs = mixed_inputs()
    batches: list[list[int]] = []
    small.add_observer(lambda items, _seconds: batches.append([it.index for it in items]))
    results = small.encode(seqs)
    assert len(batches) > 1 and all(len(b) <= 3 for b in batches)
    assert all(sum(len(seqs[i]) for i in b) <= 310 or len(b) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))  # each computed once
    assert [r.index for r in results] == list(range(len(seqs)))


def test_activation_defaults_and_overrides(demo_engine):
    seq = [mixed_inputs()[3]]
    raw = demo_engine.encode(seq, task="classify", params=PoolingParams(use_activation=False))[0]
    default = demo_engine.encode(seq, task="classify")[0]
    assert torch.allclose(default.data, torch.sigmoid(raw.data))  # one label: sigmoid
    assert torch.allclose(default.logits, raw.data)


def test_token_classify_all_and_step(demo_engine):
    seq = [5, 9, 7, 9, 3, 9]
    every = demo_engine.encode([seq], task="token_classify")[0]
    assert every.data.shape == (6, 1) and every.pooled_positions == list(range(6))
    step = demo_engine.encode([seq], task="token_classify",
                              params=PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=9))[0]
    assert step.pooled_positions == [1, 3, 5]
    assert torch.allclose(step.data, every.data[[1, 3, 5]], atol=1e-6)


def test_embed_normalize_dimensions_and_mean(demo_engine):
    seq = mixed_inputs()[4]
    full = demo_engine.encode([seq], task="embed")[0].data
    assert full.shape == (64,) and torch.isclose(full.norm(), torch.tensor(1.0))
    cut = demo_engine.encode([seq], task="embed", params=PoolingParams(dimensions=16))[0].data
    assert cut.shape == (16,) and torch.isclose(cut.norm(), torch.tensor(1.0))
    tokens = demo_engine.encode([seq], task="token_embed", params=PoolingParams(normalize=False))[0].data
    mean = demo_engine.encode([seq], task="embed", params=PoolingParams(pooling_type=PoolingType.MEAN,
                                                                        normalize=False))[0].data
    assert torch.allclose(mean, tokens.mean(0), atol=1e-5)


def test_truncation_sides(demo_engine):
    seq = list(range(1, 41))
    left = demo_engine.encode([seq], params=PoolingParams(truncate_prompt_tokens=10))[0]
    right = demo_engine.encode([seq], params=PoolingParams(truncate_prompt_tokens=10, truncation_side="right"))[0]
    assert left.truncated and left.num_tokens == 10
    assert torch.allclose(left.data, demo_engine.encode([seq[-10:]])[0].data)
    assert torch.allclose(right.data, demo_engine.encode([seq[:10]])[0].data)


@pytest.mark.parametrize("inputs, params, message", [
    ([], None, "inputs: must not be empty"),
    ([[1, 2], []], None, "inputs[1]: input is empty"),
    ([[1, 2], [3, 400]], None, "inputs[1]: token id 400 is outside the vocabulary"),
    ([[1] * 5000], None, "inputs[0]: input has 5000 tokens, more than max_model_len 4096"),
    ([[1, 2]], PoolingParams(pooling_type=PoolingType.STEP), "pooling.pooling_type"),
    ([[1, 2]], PoolingParams(dimensions=1000), "pooling.dimensions"),
])
def test_bad_inputs_name_field_and_index(demo_engine, inputs, params, message):
    with pytest.raises(InvalidInputError) as info:
        demo_engine.encode(inputs, task="classify", params=params)
    assert message in str(info.value)


def test_step_without_tag_is_an_error(demo_engine):
    with pytest.raises(InvalidInputError, match="pooling.step_tag_id: STEP pooling needs a step tag"):
        demo_engine.encode([[1, 2]], task="token_classify", params=PoolingParams(pooling_type=PoolingType.STEP))


def test_chat_template_render_and_unknown_role(demo_engine):
    messages = ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})
    rendered = demo_engine.core.tokenizer.render_chat(ChatInput(messages=messages))
    direct = demo_engine.core.tokenizer.encode("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
                                               add_special_tokens=False)
    assert rendered == direct
    reward = demo_engine.chat_reward([list(messages)])[0]
    assert reward.num_tokens == len(direct)
    logits = demo_engine.encode([direct], params=PoolingParams(use_activation=False))[0].data
    assert reward.score == pytest.approx(float(logits[0]), abs=1e-6)  # the raw reward
    assert reward.label_scores[0][1] == pytest.approx(float(torch.sigmoid(logits[0])), abs=1e-6)
    with pytest.raises(InvalidInputError, match=r"conversations\[1\]: unknown role 'robot'"):
        demo_engine.chat_reward([list(messages), [{"role": "robot", "content": "x"}]])


def test_unsupported_task_is_named(tmp_path, demo_model_dir):
    from rewardserve.engine.pooling import resolve
    from rewardserve.engine.models.base import ModelTraits, decoder_pooling
    from rewardserve.engine.types import PoolingTask

    traits = ModelTraits("BertModel", 32, 100, 512, num_labels=0, default_pooling=decoder_pooling())
    with pytest.raises(UnsupportedTaskError, match="task: BertModel cannot do classify"):
        resolve(traits, PoolingTask.CLASSIFY, PoolingParams())


def test_request_chat_template_is_refused_by_default(demo_engine):
    chat = ChatInput(messages=({"role": "user", "content": "hi"},), chat_template="{{ messages }}")
    with pytest.raises(InvalidInputError, match=r"^chat_template: request chat templates are off"):
        demo_engine.chat_reward([chat])


def test_chat_template_override_kwargs_and_generation_prompt(demo_model_dir):
    from rewardserve.engine.engine import Engine

    engine = Engine.from_model(str(demo_model_dir), device="cpu", dtype="float32", allow_request_chat_template=True)
    template = ("{% for m in messages %}[{{ m['role'] }}{% if shout %}!{% endif %}]{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    messages = ({"role": "user", "content": "hi"},)
    chat = ChatInput(messages=messages, chat_template=template, chat_template_kwargs={"shout": True},
                     add_generation_prompt=True)
    tokenizer = engine.core.tokenizer
    assert tokenizer.render_chat(chat) == tokenizer.encode("[user!]hi[assistant]", add_special_tokens=False)
    open_turn = ChatInput(messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}),
                          continue_final_message=True)
    rendered = tokenizer.hf.decode(tokenizer.render_chat(open_turn))
    assert rendered.endswith("<|im_start|>assistant\nThe")  # no end-of-turn after the open message
    engine.core.close()


def test_result_over_the_size_limit_is_refused_before_compute(demo_model_dir):
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig
    from rewardserve.engine.engine import Engine
    from rewardserve.engine.types import PoolingTask

    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32"),
                          runner=RunnerConfig(device="cpu"), scheduler=SchedulerConfig(max_result_mb=1))
    engine = Engine(config)
    computed = []
    engine.add_observer(lambda items, seconds: computed.append(len(items)))
    text = " ".join(["word"] * 100)
    per_input = len(engine.core.tokenizer.encode(text)) * engine.info.hidden_size * 4  # [tokens, hidden] float32
    texts = [text] * ((1024 * 1024) // per_input + 2)
    with pytest.raises(InvalidInputError, match=r"^inputs\[\d+\]: the result would hold about 1\.\d MiB by this "
                                                r"input, more than the limit of 1 MiB"):
        engine.encode(texts, PoolingTask.TOKEN_EMBED)
    assert computed == []  # refused before any forward pass
    assert len(engine.encode(texts[:2], PoolingTask.TOKEN_EMBED)) == 2


def test_step_tag_outside_the_vocabulary_is_refused(demo_engine):
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    with pytest.raises(InvalidInputError, match=r"^pooling.step_tag_id: 1000000 is outside the vocabulary \(0..399\)"):
        demo_engine.chat_reward([chat], PoolingParams(step_tag_id=1_000_000))


def test_served_model_name_is_never_a_host_path(demo_model_dir, demo_engine):
    from rewardserve.engine.config import ModelConfig

    assert demo_engine.info.model == demo_model_dir.name
    assert ModelConfig(model=str(demo_model_dir), served_model_name="my-rm").served_name() == "my-rm"
    assert ModelConfig(model="org/reward-model").served_name() == "org/reward-model"  # a hub id
