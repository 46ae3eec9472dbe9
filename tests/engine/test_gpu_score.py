"""GPU parity of Score (bfloat16, the default attention backend, eager and compiled + CUDA graphs).

- A BERT cross-encoder (head size 64, two token types): the segment ids ride in the staging
  row's positions through the eager forward, the compiled forward and the CUDA-graph replay;
  each pair's logit is compared with transformers' float32 padded forward WITH segment ids,
  and packed with each pair alone. A check without segment ids shows the difference is seen.
- A Qwen3-style decoder reranker: P(yes) against the published prompt run through transformers
  in float32 (the hand recipe of tests/engine/test_score.py).
Run on the GPU machine: ``pytest -m gpu tests/engine/test_gpu_score.py``.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

tf = pytest.importorskip("transformers")

QUERY = "what is packing?"
DOCS = ["packed batches have no padding", "a reranker orders documents by how well each one answers",
        "yes or no", "the reward model reads a conversation and returns one score for the response",
        "restart positions per sequence", "Is this response helpful, honest and harmless? Yes or no."] * 3
MODES = {"eager": dict(compile=False, cuda_graphs=False), "compile+graphs": dict(compile=True, cuda_graphs=True)}
TOL_ABS = 5e-2  # bf16 backbone, fp32 head: |Δ logit| / max(1, |logit|)


def _engine(folder, mode: str, **model):
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
    from rewardserve.engine.engine import Engine

    return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="bfloat16", **model),
                               runner=RunnerConfig(device="cuda", **MODES[mode])))


def _rel_abs(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).abs() / want.abs().clamp(min=1)).max())


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from score_testlib import BERT_SIZES, wordpiece_tokenizer

    folder = tmp_path_factory.mktemp("gpu-ce")
    tok = wordpiece_tokenizer(folder)
    sizes = {**BERT_SIZES, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512}
    config = tf.BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, **sizes)
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    tf.BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


@torch.no_grad()
def _hf_logits(folder, token_types: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    model = tf.BertForSequenceClassification.from_pretrained(str(folder), dtype=dtype).cuda().eval()
    enc = tok([QUERY] * len(DOCS), DOCS, padding=True, return_tensors="pt").to("cuda")
    if not token_types:
        enc.pop("token_type_ids")
    return model(**enc).logits[:, 0].float().cpu()


def test_cross_encoder_score_fp32_equals_transformers_with_segment_ids(cross_encoder):
    """float32 on the GPU: the segment-id path is exact up to kernel rounding."""
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
    from rewardserve.engine.engine import Engine

    engine = Engine(EngineConfig(model=ModelConfig(model=str(cross_encoder), dtype="float32"),
                                 runner=RunnerConfig(device="cuda", compile=False, cuda_graphs=False)))
    got = torch.tensor([r.logit for r in engine.score(QUERY, DOCS).results])
    want, untyped = _hf_logits(cross_encoder), _hf_logits(cross_encoder, token_types=False)
    assert _rel_abs(got, want) < 5e-3
    assert _rel_abs(got, untyped) > 10 * _rel_abs(got, want)  # the segment ids are read


@pytest.mark.parametrize("mode", list(MODES))
def test_cross_encoder_score_bf16_equals_transformers_with_segment_ids(cross_encoder, mode):
    """bfloat16: within the parity suite's budget, 2x transformers-bf16's own distance from
    float32 plus 2e-2 (a random-weight BERT's logits move ~0.2 in bf16 in transformers too)."""
    engine = _engine(cross_encoder, mode)
    got = torch.tensor([r.logit for r in engine.score(QUERY, DOCS).results])
    want = _hf_logits(cross_encoder)
    hf_bf16 = (_hf_logits(cross_encoder, dtype=torch.bfloat16) - want).abs()
    assert bool(((got - want).abs() <= 2 * hf_bf16.max() + 2e-2).all()), (got, want, hf_bf16.max())
    alone = torch.tensor([engine.score(QUERY, [d]).results[0].logit for d in DOCS[:6]])
    assert _rel_abs(alone, got[:6]) < 1e-2


@pytest.mark.parametrize("mode", list(MODES))
def test_decoder_reranker_bf16_equals_the_published_prompt(tmp_path, mode):
    from score_testlib import NO_ID, YES_ID, qwen3_reranker, reranker_pooler_config

    from rewardserve.engine.score import RERANKER_INSTRUCTION, RERANKER_SYSTEM

    folder = qwen3_reranker(tmp_path / "rr")
    engine = _engine(folder, mode, convert="classify", pooler_config=reranker_pooler_config())
    got = torch.tensor([r.logit for r in engine.score(QUERY, DOCS[:6]).results])
    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    lm = tf.Qwen3ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).cuda().eval()
    want = []
    with torch.no_grad():
        for doc in DOCS[:6]:
            text = (f"<|im_start|>system\n{RERANKER_SYSTEM}<|im_end|>\n<|im_start|>user\n<Instruct>: "
                    f"{RERANKER_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {doc}<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].cuda()
            last = lm(input_ids=ids).logits[0, -1].float()
            want.append((last[YES_ID] - last[NO_ID]).item())
    assert _rel_abs(got, torch.tensor(want)) < TOL_ABS
