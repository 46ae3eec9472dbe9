"""Score (engine/score.py) on tiny hub-layout checkpoints against independent references.

- BERT cross-encoder: equals transformers' padded forward WITH segment ids (1e-5, fp32), and
  differs from it without them (so the segment ids are what makes it equal); packed equals alone.
- Qwen3-style decoder reranker: equals the hand-built published prompt run through
  transformers' causal LM, P(yes) from the yes/no logits of the last token.
- Embedding model: the score is the dot product of the normalised embeddings (the engine's own
  embed task, and transformers' CLS hidden state).
- Truncation keeps the query; errors name the field and item; top_n.
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from rewardserve.engine.engine import Engine
from rewardserve.engine.errors import EngineError, InvalidInputError, UnsupportedTaskError
from rewardserve.engine.score import RERANKER_INSTRUCTION, RERANKER_SYSTEM, ScoreMethod, ScoreParams
from rewardserve.engine.score_cli import main_score
from score_testlib import (NO_ID, YES_ID, bert_cross_encoder, bert_embedder, qwen3_reranker,
                           reranker_pooler_config)

QUERY = "what is packing?"
DOCS = ["packed batches have no padding", "a reranker orders documents by how well each one answers",
        "yes or no", "the reward model reads a conversation and returns one score for the response",
        "restart positions per sequence"]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    folder = bert_cross_encoder(tmp_path_factory.mktemp("ce") / "ckpt")
    return folder, Engine.from_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = qwen3_reranker(tmp_path_factory.mktemp("rr") / "ckpt")
    return folder, Engine.from_model(str(folder), device="cpu", dtype="float32", convert="classify",
                                     pooler_config=reranker_pooler_config())


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    folder = bert_embedder(tmp_path_factory.mktemp("emb") / "ckpt")
    return folder, Engine.from_model(str(folder), device="cpu", dtype="float32")


@torch.no_grad()
def _transformers_cross_encoder(folder, query, docs, token_types=True) -> torch.Tensor:
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.BertForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    enc = tok([query] * len(docs), docs, padding=True, return_tensors="pt")
    if not token_types:
        enc.pop("token_type_ids")
    return model(**enc).logits[:, 0]  # [n]


def test_cross_encoder_equals_transformers_with_segment_ids(cross_encoder):
    folder, engine = cross_encoder
    out = engine.score(QUERY, DOCS)
    assert out.method == ScoreMethod.CROSS_ENCODER
    assert [r.index for r in out.results] == list(range(len(DOCS)))
    logits = torch.tensor([r.logit for r in out.results])
    want = _transformers_cross_encoder(folder, QUERY, DOCS)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor([r.score for r in out.results]), torch.sigmoid(want), atol=1e-5, rtol=0)
    # Without segment ids transformers gives other numbers: the types are what we match.
    assert (logits - _transformers_cross_encoder(folder, QUERY, DOCS, token_types=False)).abs().max() > 1e-3


def test_cross_encoder_packed_batch_equals_each_pair_alone(cross_encoder):
    _, engine = cross_encoder
    together = [r.logit for r in engine.score(QUERY, DOCS).results]
    alone = [engine.score(QUERY, [d]).results[0].logit for d in DOCS]
    torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), atol=1e-5, rtol=0)


def test_token_id_inputs_equal_text(cross_encoder):
    folder, engine = cross_encoder
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    by_ids = engine.score(ids(QUERY), [ids(d) for d in DOCS[:2]]).results
    by_text = engine.score(QUERY, DOCS[:2]).results
    assert [r.logit for r in by_ids] == pytest.approx([r.logit for r in by_text], abs=1e-6)


def test_top_n_returns_the_best_first(cross_encoder):
    _, engine = cross_encoder
    every = engine.score(QUERY, DOCS).results
    best = engine.score(QUERY, DOCS, ScoreParams(top_n=2)).results
    ranked = sorted(every, key=lambda r: -r.score)
    assert [r.index for r in best] == [r.index for r in ranked[:2]]
    assert len(engine.score(QUERY, DOCS, ScoreParams(top_n=50)).results) == len(DOCS)


@pytest.mark.parametrize("top_n", [-1, 1.5, True])
def test_top_n_must_be_a_non_negative_integer(cross_encoder, top_n):
    _, engine = cross_encoder
    with pytest.raises(InvalidInputError, match="^top_n: "):
        engine.score(QUERY, DOCS, ScoreParams(top_n=top_n))


def test_truncation_cuts_only_the_document(cross_encoder):
    folder, engine = cross_encoder
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    long_doc = " ".join(DOCS * 4)
    with pytest.raises(InvalidInputError, match=r"^documents\[1\]: the pair has \d+ tokens, more than 128"):
        engine.score(QUERY, [DOCS[0], " ".join(DOCS * 12)])  # over max_position_embeddings, no truncation
    (result,) = engine.score(QUERY, [long_doc], ScoreParams(truncate_prompt_tokens=24)).results
    assert result.truncated and result.num_tokens == 24
    q_ids = tok(QUERY, add_special_tokens=False)["input_ids"]
    d_ids = tok(long_doc, add_special_tokens=False)["input_ids"][:24 - len(q_ids) - 3]  # [CLS] [SEP] [SEP]
    (manual,) = engine.score(q_ids, [d_ids]).results
    assert result.logit == pytest.approx(manual.logit, abs=1e-6) and not manual.truncated


def test_a_query_that_leaves_no_room_is_named(cross_encoder):
    _, engine = cross_encoder
    with pytest.raises(InvalidInputError, match=r"^query: .*no room for documents\[0\]"):
        engine.score(" ".join(DOCS), ["a"], ScoreParams(truncate_prompt_tokens=8))


def test_errors_name_the_field_and_item(cross_encoder):
    _, engine = cross_encoder
    with pytest.raises(InvalidInputError, match=r"^documents\[3\]: token id 99999 is outside"):
        engine.score(QUERY, ["a", "b", "c", [5, 99999]])
    with pytest.raises(InvalidInputError, match=r"^documents\[1\]: is empty"):
        engine.score(QUERY, ["a", ""])
    with pytest.raises(InvalidInputError, match=r"^query: is empty"):
        engine.score("", ["a"])
    with pytest.raises(InvalidInputError, match=r"^documents: must not be empty"):
        engine.score(QUERY, [])
    too_many = engine.core.limits.max_items + 1  # the one item-count rule Encode and ChatReward use
    with pytest.raises(InvalidInputError, match=rf"^documents: has {too_many} items, more than the limit"):
        engine.score(QUERY, ["a"] * too_many)
    with pytest.raises(InvalidInputError, match=r"^documents\[0\]: must be text or token ids"):
        engine.score(QUERY, [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(InvalidInputError, match=r"^instruction: only decoder rerankers"):
        engine.score(QUERY, ["a"], ScoreParams(instruction="find it"))


def test_a_multi_label_classifier_cannot_score(tmp_path):
    engine = Engine.from_model(str(bert_cross_encoder(tmp_path / "ckpt", num_labels=3)), device="cpu", dtype="float32")
    with pytest.raises(UnsupportedTaskError, match="3 labels; Score needs a one-label head"):
        engine.score(QUERY, ["a"])


@torch.no_grad()
def _hand_reranker(folder, query, doc, instruction=RERANKER_INSTRUCTION) -> tuple[float, float]:
    """Qwen3-Reranker's published recipe by hand: the whole prompt tokenized at once, the last
    token's LM logits of yes and no, P(yes) = softmax([no, yes])[1]."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    lm = transformers.Qwen3ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    text = (f"<|im_start|>system\n{RERANKER_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    last = lm(input_ids=ids).logits[0, -1]
    pair = torch.log_softmax(last[[NO_ID, YES_ID]], dim=-1)
    return pair[1].exp().item(), (last[YES_ID] - last[NO_ID]).item()


def test_decoder_reranker_equals_the_published_prompt_by_hand(reranker):
    folder, engine = reranker
    out = engine.score(QUERY, DOCS[:3])
    assert out.method == ScoreMethod.DECODER_RERANKER
    for result, doc in zip(out.results, DOCS[:3]):
        p_yes, logit = _hand_reranker(folder, QUERY, doc)
        assert result.score == pytest.approx(p_yes, abs=1e-5)
        assert result.logit == pytest.approx(logit, abs=1e-4)
    (custom,) = engine.score(QUERY, DOCS[:1], ScoreParams(instruction="Find passages about batching")).results
    assert custom.score == pytest.approx(_hand_reranker(folder, QUERY, DOCS[0], "Find passages about batching")[0],
                                         abs=1e-5)


def test_decoder_reranker_truncation_keeps_the_prompt_tail(reranker):
    _, engine = reranker
    full = engine.score(QUERY, [DOCS[3]]).results[0].num_tokens
    (cut,) = engine.score(QUERY, [DOCS[3]], ScoreParams(truncate_prompt_tokens=full - 5)).results
    assert cut.truncated and cut.num_tokens == full - 5
    plan = engine.core.prepare_score(QUERY, [DOCS[3]], ScoreParams(truncate_prompt_tokens=full - 5))
    whole = engine.core.prepare_score(QUERY, [DOCS[3]], ScoreParams()).items[0].token_ids
    tail = engine.core.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
                                        add_special_tokens=False)
    cut_ids = plan.items[0].token_ids
    assert cut_ids[-len(tail):] == tail  # the prompt still ends where the head reads yes/no
    assert cut_ids[:-len(tail)] == whole[:-len(tail) - 5]  # only the document's last 5 tokens went


def test_cosine_equals_the_normalised_embeddings_dot_product(embedder):
    folder, engine = embedder
    out = engine.score(QUERY, DOCS)
    assert out.method == ScoreMethod.EMBEDDING_COSINE
    assert all(r.logit is None for r in out.results)
    embeds = torch.stack([r.data for r in engine.encode([QUERY, *DOCS], task="embed")])  # [1 + n, H], normalised
    want = embeds[1:] @ embeds[0]
    torch.testing.assert_close(torch.tensor([r.score for r in out.results]), want, atol=1e-6, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.BertModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        cls = torch.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0, 0] for t in [QUERY, *DOCS]])
    cls = torch.nn.functional.normalize(cls, dim=-1)
    torch.testing.assert_close(torch.tensor([r.score for r in out.results]), cls[1:] @ cls[0], atol=1e-5, rtol=0)
    assert out.prompt_tokens == sum(r.num_tokens for r in out.results) + len(tok(QUERY)["input_ids"])


def test_cosine_errors_name_query_and_documents(embedder):
    _, engine = embedder
    with pytest.raises(InvalidInputError, match=r"^query: token id 99999"):
        engine.score([99999], ["a"])
    with pytest.raises(InvalidInputError, match=r"^documents\[2\]: token id 99999"):
        engine.score(QUERY, ["a", "b", [99999]])


def test_cli_scores_jsonl(cross_encoder, tmp_path, capsys):
    folder, engine = cross_encoder
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": QUERY, "documents": DOCS}) + "\n\n"
                   + json.dumps({"query": QUERY, "documents": DOCS[:2]}) + "\n")
    dst = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(dst), "--model", str(folder), "--device", "cpu", "--dtype", "float32"]
    assert main_score([*args, "--top-n", "2"]) == 0
    lines = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [line["line"] for line in lines] == [1, 3] and lines[0]["method"] == "cross_encoder"
    best = engine.score(QUERY, DOCS, ScoreParams(top_n=2)).results
    assert [r["index"] for r in lines[0]["results"]] == [r.index for r in best]
    assert [r["score"] for r in lines[0]["results"]] == pytest.approx([r.score for r in best], abs=1e-6)
    src.write_text(json.dumps({"query": QUERY, "documents": ["a", [99999]]}) + "\n")
    assert main_score(args) == 2
    assert "input line 1: documents[1]: token id 99999" in capsys.readouterr().err


def test_cli_refuses_a_line_without_documents(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q"}) + "\n")
    with pytest.raises(EngineError, match="input line 1: expected an object with query and a documents list"):
        from rewardserve.engine.score_cli import read_requests

        read_requests(src.open())


def test_segment_ids_ride_in_the_staging_positions_and_split_back():
    import numpy as np

    from rewardserve.engine import staging
    from rewardserve.engine.batch import PackedBatch

    class Item:
        def __init__(self, ids, types=None):
            self.token_ids, self.positions, self.token_type_ids = ids, [0], types

    items = [Item([5, 6, 7, 8], [0, 0, 1, 1]), Item([9, 10]), Item([11, 12, 13], [0, 1, 1])]
    batch = PackedBatch.of(items)
    layout = staging.Layout(batch.num_tokens, batch.num_seqs, batch.num_rows)
    row = np.zeros(layout.total, dtype=np.int64)
    staging.fill(row, batch, layout)
    _, positions, _, _ = layout.views(torch.from_numpy(row))
    plain, segments = staging.split_segments(positions)
    assert plain.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
    assert segments.tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 1]
    staging.fill(row, PackedBatch.of(items[1:2]), staging.Layout(2, 1, 1))  # no types: plain positions
    assert row[staging.Layout(2, 1, 1).pos_start:][:2].tolist() == [0, 1]
