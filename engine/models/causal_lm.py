"""``*ForCausalLM`` checkpoints served as classifiers or embedders (``--convert``).

The backbone is transformers' base model (``.model``); the LM head is used only to build a
score head. ``convert="classify"`` picks the head in this order:

(a) the checkpoint has ``score.weight`` [L, H] (a classifier saved in a causal-LM layout):
    Linear(H, L) with it; activation from ``num_labels`` / ``problem_type``.
(b) ``pooler_overrides["classifier_from_token"] = [tok, ...]`` (strings tokenized to exactly
    one id each, or ints):
    - ``"method": "from_2_way_softmax"``: exactly [neg, pos]; one score row
      ``lm_head[pos] - lm_head[neg]`` and sigmoid, because sigmoid(a - b) = softmax([b, a])[1]:
      the probability the LM gives ``pos`` over ``neg`` at the pooled token.
    - ``"method": "no_post_processing"`` (default): the chosen LM-head rows, one label each,
      labelled by the token text; default activation (softmax for several).
(c) otherwise (math-shepherd-style process RMs): the head is the full LM head, ``score``
    returns next-token logits [N, vocab] (Gemma2's ``final_logit_softcapping`` applied, as the
    LM's own logits are). ``traits.returned_token_ids`` (override ``"returned_token_ids"``)
    names the vocab columns that matter and ``traits.step_tag_id`` (override ``"step_tag_id"``)
    the step marker; both must be ints, as pooling.py reads the same ``--pooler-config`` keys
    as ids. token_classify defaults to STEP pooling. Pooling contract: pool the rows (step
    positions), ``score`` them → [n, vocab], keep the ``returned_token_ids`` columns → [n, k],
    then softmax over those k: e.g. math-shepherd's P(+) among {+, -}.

``convert="embed"`` (or "auto" with no classify hint): no head, LAST pooling, normalized.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import ModelTraits, PoolingModel, default_activation
from rewardserve.engine.models.registry import LoadSpec
from rewardserve.engine.models.seq_cls import PackedDecoder, decoder_traits, text_config
from rewardserve.engine.models.weights import read_tensor

METHODS = ("no_post_processing", "from_2_way_softmax")


class SoftCap(nn.Module):
    """logits → cap * tanh(logits / cap) (Gemma2's final logit soft-capping)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.cap) * self.cap


def load(spec: LoadSpec) -> PoolingModel:
    """Load the causal LM with transformers and attach the head ``convert`` asks for."""
    from transformers import AutoModelForCausalLM

    convert = spec.model_config.convert
    score_weight = read_tensor(spec.folder, "score.weight") if convert != "embed" else None
    if convert == "auto":
        hints = ("classifier_from_token", "returned_token_ids", "step_tag_id")
        convert = "classify" if score_weight is not None or any(k in spec.pooler_overrides for k in hints) else "embed"
    if convert not in ("classify", "embed"):
        raise EngineError(f"{spec.architecture} is a generative model: serve it with --convert classify or embed")
    if spec.shard is not None:  # tensor parallel: this rank's backbone shard, the head on rank 0
        from rewardserve.engine.models.sharded import sharded_decoder

        return sharded_decoder(spec, lambda spec, backbone: _sharded_head(spec, backbone, convert))
    hf, loading = AutoModelForCausalLM.from_pretrained(str(spec.folder), dtype=spec.dtype, trust_remote_code=False,
                                                       output_loading_info=True)
    backbone = getattr(hf, hf.base_model_prefix, None) or hf.base_model
    if convert == "embed":
        return PackedDecoder(backbone, None, decoder_traits(spec, num_labels=0, activation="identity", normalize=True))
    lm_head = hf.get_output_embeddings()
    if score_weight is None:
        _refuse_made_up_lm_head(spec, hf, lm_head, loading["missing_keys"])
    if score_weight is not None:
        bias = read_tensor(spec.folder, "score.bias")  # [L] or None
        head = _linear(score_weight.to(spec.dtype), None if bias is None else bias.to(spec.dtype))
        num = head.out_features
        activation = default_activation(num, getattr(spec.hf_config, "problem_type", None))
        return PackedDecoder(backbone, head, decoder_traits(spec, num_labels=num, activation=activation))
    if spec.pooler_overrides.get("classifier_from_token"):
        return PackedDecoder(backbone, *_from_tokens(spec, lm_head))
    return PackedDecoder(backbone, *_full_lm_head(spec, backbone, lm_head))


def _sharded_head(spec: LoadSpec, backbone: nn.Module, convert: str) -> tuple[nn.Module | None, ModelTraits]:
    """Rank 0's head under tensor parallelism, read from the checkpoint alone: ``score.*``, else
    rows of (or the whole) ``lm_head`` (the tied input embedding where the config ties them)."""
    from rewardserve.engine.models.sharded import read_linear

    if convert == "embed":
        return None, decoder_traits(spec, num_labels=0, activation="identity", normalize=True)
    head = read_linear(spec.folder, "score", spec.dtype)
    if head is not None:
        num = head.out_features
        return head, decoder_traits(spec, num_labels=num,
                                    activation=default_activation(num, getattr(spec.hf_config, "problem_type", None)))
    lm_head = read_linear(spec.folder, "lm_head", spec.dtype)
    if lm_head is None and getattr(text_config(spec.hf_config), "tie_word_embeddings", False):
        lm_head = read_linear(spec.folder, "model.embed_tokens", spec.dtype)
    if lm_head is None:
        _refuse_made_up_lm_head(spec, nn.Module(), lm_head, {"lm_head.weight"})
    if spec.pooler_overrides.get("classifier_from_token"):
        return _from_tokens(spec, lm_head)
    return _full_lm_head(spec, backbone, lm_head)


def _refuse_made_up_lm_head(spec: LoadSpec, hf: nn.Module, lm_head: nn.Module, missing: set[str]) -> None:
    """A head built from LM-head rows needs LM-head weights in the checkpoint: transformers
    fills a missing one with random values (a ``*Model`` backbone has none), which would be
    served as a score head. Tied embeddings are the LM head, so they pass."""
    names = {f"{name}.weight" for name, module in hf.named_modules() if module is lm_head} or {"lm_head.weight"}
    if names & set(missing):
        raise EngineError(f"{spec.architecture} checkpoint {spec.folder} has no score head weights (score.weight) "
                          f"and no LM head ({', '.join(sorted(names))}) to build one from, so --convert classify would "
                          "serve a randomly initialised head; serve a checkpoint with its classification head "
                          "(*ForSequenceClassification, or score.weight) or its LM head (*ForCausalLM), "
                          "or use --convert embed for embeddings")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear holding copies of ``weight`` [L, H] / ``bias`` [L] (never the LM head's storage,
    so the runner may cast the head to fp32 without touching tied embeddings)."""
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    head.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        head.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return head


def token_id(tokenizer: Any, token: str | int, what: str) -> int:
    """An int id as given, or the one id a string tokenizes to (an error for zero or several)."""
    if isinstance(token, int):
        return token
    if tokenizer is None:
        raise EngineError(f"{what}: token {token!r} given as text but the model has no tokenizer")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise EngineError(f"{what}: {token!r} is {len(ids)} tokens {ids}, not exactly one")
    return int(ids[0])


def _int_id(value: Any, what: str) -> int:
    """Token ids the pooling layer also reads from ``--pooler-config`` must be ints there too."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"{what}: {value!r} must be a token id (int); text is only accepted "
                          "in classifier_from_token")
    return value


def _from_tokens(spec: LoadSpec, lm_head: nn.Linear) -> tuple[nn.Module, ModelTraits]:
    """Score rows taken from the LM head: chosen token rows, or the 2-way softmax difference."""
    tokens = spec.pooler_overrides["classifier_from_token"]
    method = spec.pooler_overrides.get("method", "no_post_processing")
    if method not in METHODS:
        raise EngineError(f"pooler method {method!r} is not one of {', '.join(METHODS)}")
    ids = [token_id(spec.tokenizer, t, "classifier_from_token") for t in tokens]
    rows = lm_head.weight[ids]                                   # [k, H]
    bias = lm_head.bias[ids] if lm_head.bias is not None else None  # [k]
    names = tuple(spec.tokenizer.decode([i]) if spec.tokenizer is not None else str(i) for i in ids)
    if method == "from_2_way_softmax":
        if len(ids) != 2:
            raise EngineError(f"from_2_way_softmax needs exactly 2 tokens [negative, positive], got {len(ids)}")
        head = _linear(rows[1:] - rows[:1], None if bias is None else bias[1:] - bias[:1])  # [1, H]
        return head, decoder_traits(spec, num_labels=1, activation="sigmoid", labels=(names[1],))
    head = _linear(rows, bias)
    return head, decoder_traits(spec, num_labels=len(ids), activation=default_activation(len(ids), None),
                                labels=names)


def _full_lm_head(spec: LoadSpec, backbone: nn.Module, lm_head: nn.Linear) -> tuple[nn.Module, ModelTraits]:
    """The whole LM head as the score head (math-shepherd PRMs): logits [N, vocab]."""
    over = spec.pooler_overrides
    returned = tuple(_int_id(t, "returned_token_ids") for t in over["returned_token_ids"]) \
        if over.get("returned_token_ids") else None
    step = _int_id(over["step_tag_id"], "step_tag_id") if over.get("step_tag_id") is not None else None
    tied = lm_head.weight is backbone.get_input_embeddings().weight
    head: nn.Module = _linear(lm_head.weight, lm_head.bias) if tied else lm_head
    cap = getattr(text_config(spec.hf_config), "final_logit_softcapping", None)
    if cap:
        head = nn.Sequential(head, SoftCap(float(cap)))
    vocab = int(lm_head.out_features)
    traits = decoder_traits(spec, num_labels=vocab, activation="softmax", step=True, labels=(),
                            returned_token_ids=returned, step_tag_id=step)
    return head, traits
