"""``--convert classify`` must never serve a head transformers made up (issue 19, hazard 1).

A ``*Model`` checkpoint (the bare backbone, as embedding repos ship it) has neither ``score.weight``
nor ``lm_head.weight``. Loading it as a causal LM gives a randomly initialised LM head, which
``--convert classify`` would turn into a 400-label (vocabulary-wide) score head. Loading must be
refused with one line naming the missing weights and the fix; the same folder still serves
embeddings, and a tied-embedding backbone (whose LM head *is* the embeddings) still converts.
"""
from __future__ import annotations

import pytest
import transformers

from rewardserve.engine.errors import EngineError
from score_testlib import QWEN3_SIZES
from tiny_decoders import load


def _backbone_checkpoint(folder, tied: bool = False):
    config = transformers.Qwen3Config(**{**QWEN3_SIZES, "tie_word_embeddings": tied})
    config.architectures = ["Qwen3Model"]
    transformers.Qwen3Model(config).save_pretrained(str(folder))
    return folder


def test_classify_refuses_a_backbone_without_score_or_lm_head_weights(ckpt):
    folder = _backbone_checkpoint(ckpt)
    with pytest.raises(EngineError) as err:
        load(folder, convert="classify")
    message = str(err.value)
    assert "lm_head.weight" in message and "score.weight" in message
    assert "--convert embed" in message and "\n" not in message


def test_classifier_from_token_refuses_a_missing_lm_head(ckpt):
    folder = _backbone_checkpoint(ckpt)
    with pytest.raises(EngineError, match="lm_head.weight"):
        load(folder, convert="classify", overrides={"classifier_from_token": [5, 6]})


def test_the_same_backbone_still_serves_embeddings(ckpt):
    model = load(_backbone_checkpoint(ckpt), convert="embed")
    assert model.traits.num_labels == 0


def test_a_tied_backbone_converts_with_its_embeddings_as_lm_head(ckpt):
    model = load(_backbone_checkpoint(ckpt, tied=True), convert="classify")
    assert model.traits.num_labels == QWEN3_SIZES["vocab_size"]
