"""*ForCausalLM served with --convert classify / embed.

Reference for every head: transformers' own padded *ForCausalLM forward (eager attention), its
next-token logits at the pooled positions, turned into the expected score by hand:
score.weight @ hidden, softmax([neg, pos])[1], chosen logit columns, or the math-shepherd
softmax over the returned token ids at each step tag.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.weights import load_state_dict
from rewardserve.engine.types import PoolingTask, PoolingType
from tiny_decoders import (SIZES, STEP_TAG_ID, assert_close, check_packed_vs_solo, last_rows, load, padded,
                           random_inputs, save_tensors, step_rows, unpad)

YES, PLUS, MINUS = 327, 14, 16  # demo tokenizer ids of "Yes", "+", "-"


def _save(folder, arch: str, tied: bool = False):
    cls = getattr(tf, arch)
    config_cls = getattr(tf, arch.replace("ForCausalLM", "Config"))
    extra = {"sliding_window": 16} if arch.startswith("Mistral") else {}
    hf = cls(config_cls(**SIZES, tie_word_embeddings=tied, **extra))
    hf.save_pretrained(str(folder))
    return hf


@torch.no_grad()
def _reference(folder, seqs, hidden: bool = False) -> torch.Tensor:
    """Padded transformers forward → packed [T, vocab] logits (or [T, H] last hidden)."""
    ref = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    ids, mask = padded(seqs)
    if hidden:
        return unpad(ref.model(input_ids=ids, attention_mask=mask).last_hidden_state, seqs)
    return unpad(ref(input_ids=ids, attention_mask=mask).logits, seqs)


def test_checkpoint_score_weight_wins(ckpt):
    """(a) score.weight [2, H] saved in a causal-LM checkpoint is the head (before token overrides)."""
    _save(ckpt, "LlamaForCausalLM")
    state = load_state_dict(ckpt)
    state["score.weight"] = torch.randn(2, SIZES["hidden_size"])
    save_tensors(ckpt, state)
    model = load(ckpt, convert="classify", overrides={"classifier_from_token": ["Yes", "+"]})
    seqs = random_inputs(seed=6)
    rows = last_rows(seqs)
    scores = check_packed_vs_solo(model, seqs, rows)
    assert_close(scores, _reference(ckpt, seqs, hidden=True)[rows] @ state["score.weight"].T)
    assert (model.traits.num_labels, model.traits.activation) == (2, "softmax")


def test_two_way_softmax_from_lm_head_rows(ckpt):
    """(b) from_2_way_softmax on a tied Qwen2: sigmoid(score) == softmax(logits[[neg, pos]])[1]."""
    _save(ckpt, "Qwen2ForCausalLM", tied=True)
    over = {"classifier_from_token": ["+", YES], "method": "from_2_way_softmax"}  # text and int ids
    model = load(ckpt, convert="classify", overrides=over)
    seqs = random_inputs(seed=7)
    rows = last_rows(seqs)
    scores = check_packed_vs_solo(model, seqs, rows)              # [N, 1]
    logits = _reference(ckpt, seqs)[rows]                        # [N, vocab]
    assert_close(scores[:, 0], logits[:, YES] - logits[:, PLUS])
    assert_close(torch.sigmoid(scores[:, 0]), logits[:, [PLUS, YES]].softmax(-1)[:, 1], 1e-5)
    t = model.traits
    assert (t.num_labels, t.activation, t.labels) == (1, "sigmoid", ("Yes",))
    # The head owns a copy: casting it for the fp32 head never touches the tied embeddings.
    assert model.head.weight.data_ptr() != model.backbone.get_input_embeddings().weight.data_ptr()


def test_chosen_token_rows(ckpt):
    """(b) no_post_processing (the default method): logits of the chosen tokens, one label each."""
    _save(ckpt, "LlamaForCausalLM")
    model = load(ckpt, convert="classify", overrides={"classifier_from_token": ["Yes", "+", MINUS]})
    seqs = random_inputs(seed=8)
    rows = last_rows(seqs)
    scores = check_packed_vs_solo(model, seqs, rows)              # [N, 3]
    assert_close(scores, _reference(ckpt, seqs)[rows][:, [YES, PLUS, MINUS]])
    t = model.traits
    assert (t.num_labels, t.activation, t.labels) == (3, "softmax", ("Yes", "+", "-"))


def test_math_shepherd_step_rewards(ckpt):
    """(c) full LM head + STEP pooling + returned_token_ids (Mistral with a sliding window)."""
    _save(ckpt, "MistralForCausalLM")
    over = {"returned_token_ids": [PLUS, MINUS], "step_tag_id": STEP_TAG_ID}
    model = load(ckpt, convert="classify", overrides=over)
    t = model.traits
    assert (t.returned_token_ids, t.step_tag_id) == ((PLUS, MINUS), STEP_TAG_ID)
    assert t.default_pooling[PoolingTask.TOKEN_CLASSIFY] == PoolingType.STEP
    assert (t.num_labels, t.activation) == (SIZES["vocab_size"], "softmax")

    seqs = random_inputs(seed=9, step_every=11)
    rows = step_rows(seqs, STEP_TAG_ID)
    logits = check_packed_vs_solo(model, seqs, rows)              # [num_steps, vocab]
    want = _reference(ckpt, seqs)[rows]
    assert_close(logits, want)
    # The pooling contract: keep the returned columns, softmax over them → P(+) per step.
    got = logits[:, list(t.returned_token_ids)].softmax(-1)
    assert_close(got, want[:, [PLUS, MINUS]].softmax(-1), 1e-5)


def test_gemma2_full_lm_head_applies_final_softcap(ckpt):
    """(c) on Gemma2: score() returns the LM's own (soft-capped) logits."""
    cfg = tf.Gemma2Config(**SIZES, head_dim=16, sliding_window=16, final_logit_softcapping=3.0)
    tf.Gemma2ForCausalLM(cfg).save_pretrained(str(ckpt))
    model = load(ckpt, convert="classify", overrides={"returned_token_ids": [PLUS, MINUS]})
    seqs = random_inputs(seed=10, lengths=(3, 20, 90))
    rows = last_rows(seqs)
    assert_close(check_packed_vs_solo(model, seqs, rows), _reference(ckpt, seqs)[rows])


def test_convert_embed(ckpt):
    """--convert embed: no head, LAST pooling, normalized; hidden == transformers' last hidden."""
    _save(ckpt, "Qwen3ForCausalLM")
    model = load(ckpt, convert="embed")
    t = model.traits
    assert (t.num_labels, t.normalize, t.default_pooling[PoolingTask.EMBED]) == (0, True, PoolingType.LAST)
    assert PoolingTask.CLASSIFY not in t.tasks() and PoolingTask.EMBED in t.tasks()
    assert model.head_modules() == []
    seqs = random_inputs(seed=11)
    from tiny_decoders import packed_hidden
    assert_close(packed_hidden(model, seqs), _reference(ckpt, seqs, hidden=True))
    assert load(ckpt).traits.num_labels == 0  # convert=auto with no classify hint → embed


@pytest.mark.parametrize("over, match", [
    ({"classifier_from_token": ["no"]}, "not exactly one"),          # "no" is 2 tokens here
    ({"classifier_from_token": ["+", "-", "Yes"], "method": "from_2_way_softmax"}, "exactly 2"),
    ({"classifier_from_token": ["+"], "method": "softmax_of_everything"}, "not one of"),
    ({"returned_token_ids": ["+", "-"]}, "must be a token id"),   # pooling.py reads these as ids
    ({"step_tag_id": "<extra_0>"}, "must be a token id"),
])
def test_bad_token_overrides(ckpt, over, match):
    _save(ckpt, "LlamaForCausalLM")
    with pytest.raises(EngineError, match=match):
        load(ckpt, convert="classify", overrides=over)


def test_convert_none_is_refused(ckpt):
    _save(ckpt, "LlamaForCausalLM")
    with pytest.raises(EngineError, match="--convert"):
        load(ckpt, convert="none")
