"""Pooling semantics through the offline Engine (the code path the server runs), on tiny
hub-layout checkpoints: activations, returned_token_ids, --pooler-config precedence, and a
process reward model's ChatReward step scores against an independent reference."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.types import ChatInput, PoolingParams
from test_reward_heads import _qwen2_reference, _qwen2_rm_checkpoint
from tiny_decoders import SIZES, STEP_TAG_ID, random_inputs


def engine_for(folder, pooler_config: str = "") -> Engine:
    return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="float32", pooler_config=pooler_config),
                               runner=RunnerConfig(device="cpu")))


@pytest.fixture
def three_labels(ckpt):
    """A 3-label Qwen3 classifier (softmax by default)."""
    tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**SIZES, head_dim=16, num_labels=3)).save_pretrained(str(ckpt))
    return ckpt


def test_several_labels_softmax_and_returned_token_ids(three_labels):
    engine = engine_for(three_labels)
    seqs = random_inputs(seed=7, lengths=(5, 40, 90))
    raw = torch.stack([r.data for r in engine.encode(seqs, "classify", PoolingParams(use_activation=False))])
    default = engine.encode(seqs, "classify")
    assert torch.allclose(torch.stack([r.data for r in default]), raw.softmax(-1), atol=1e-6)
    assert torch.allclose(torch.stack([r.logits for r in default]), raw, atol=1e-6)
    picked = engine.encode(seqs, "classify", PoolingParams(returned_token_ids=(2, 0), use_activation=False))
    assert torch.allclose(torch.stack([r.data for r in picked]), raw[:, [2, 0]], atol=1e-6)


def test_request_beats_pooler_config_beats_model_default(three_labels):
    seqs = random_inputs(seed=8, lengths=(12, 30))
    served_raw = engine_for(three_labels, '{"use_activation": false}')
    raw = torch.stack([r.data for r in served_raw.encode(seqs, "classify")])
    assert not torch.allclose(raw.sum(-1), torch.ones(2))  # logits, not probabilities
    asked = torch.stack([r.data for r in served_raw.encode(seqs, "classify", PoolingParams(use_activation=True))])
    assert torch.allclose(asked, raw.softmax(-1), atol=1e-6)


def test_process_reward_model_chat_steps_match_reference(ckpt):
    state = _qwen2_rm_checkpoint(ckpt, "Qwen2ForProcessRewardModel", 2)
    engine = engine_for(ckpt)
    messages = ({"role": "user", "content": "Add 2 and 2, then double it."},
                {"role": "assistant", "content": "2 + 2 = 4<extra_0>4 * 2 = 8<extra_0>The answer is 8.<extra_0>"})
    reward = engine.chat_reward([ChatInput(messages=messages)])[0]
    rendered = tf.AutoTokenizer.from_pretrained(str(ckpt)).apply_chat_template(list(messages), tokenize=True)
    rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)  # BatchEncoding in v5
    tags = [i for i, t in enumerate(rendered) if t == STEP_TAG_ID]
    assert len(tags) == 3 and [s.position for s in reward.step_scores] == tags
    logits = _qwen2_reference(ckpt, state, [rendered])                        # [T, 2]
    want = logits.softmax(-1)[tags, 1]
    got = torch.tensor([s.score for s in reward.step_scores])
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert reward.num_tokens == len(rendered)
    assert reward.score == pytest.approx(float(logits[-1, 1]), abs=1e-4)     # raw, last token, last label


def test_add_special_tokens_false_drops_cls_and_sep(tmp_path):
    from test_encoders import bert_checkpoint

    engine = engine_for(bert_checkpoint(tmp_path / "bert", cls_head=False))
    text = "the reward model reads a conversation"
    with_specials = engine.encode([text], "token_embed", PoolingParams(normalize=False))[0]
    without = engine.encode([text], "token_embed", PoolingParams(normalize=False, add_special_tokens=False))[0]
    assert with_specials.num_tokens == without.num_tokens + 2  # [CLS] ... [SEP]
    plain = engine.core.tokenizer.encode(text, add_special_tokens=False)
    assert without.num_tokens == len(plain)
    # Bidirectional attention: the word rows change once [CLS]/[SEP] are gone.
    assert not torch.allclose(with_specials.data[1:-1], without.data)
