"""Encoders adapter (engine/models/encoders.py): packed BERT-family parity on tiny checkpoints.

Each checkpoint is written in the hub layout (config.json, model.safetensors, a real WordPiece
or byte-level BPE tokenizer; modules.json + 1_Pooling/ + 2_Normalize/ for sentence-transformers)
and loaded through the registry. Packed results are compared with each input run alone and
with transformers' own padded forward (eager attention + attention_mask).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoTokenizer

import engine_testlib
from engine_testlib import pack_token_ids
from rewardserve.engine.config import ModelConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.registry import LoadSpec, adapter_name, load_model
from rewardserve.engine.types import PoolingTask, PoolingType

LENGTHS = [1, 7, 300, 2, 129, 64, 255, 3, 33, 16]  # ≥ 8 mixed lengths, all < max_position
CORPUS = ["The reward model reads a conversation and returns one score.",
          "Packed batches have no padding: step one, step two, the answer is 42.",
          "Is this response helpful, honest and harmless? Yes or no."] * 4
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def wordpiece_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """Train a real WordPiece tokenizer ([CLS] x [SEP]) and save it as bert-base-uncased does."""
    return engine_testlib.wordpiece_tokenizer(folder, CORPUS, model_max_length=512)


def bert_checkpoint(folder: Path, cls_head: bool, seed: int = 0) -> Path:
    """A tiny BertForSequenceClassification (3 labels) or BertModel with a WordPiece tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer(folder)
    config = transformers.BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **SMALL,
                                     num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                     label2id={"neg": 0, "neu": 1, "pos": 2})
    torch.manual_seed(seed)
    cls = transformers.BertForSequenceClassification if cls_head else transformers.BertModel
    config.architectures = [cls.__name__]
    cls(config).save_pretrained(str(folder))
    return folder


def write_sentence_transformers(folder: Path, mode: str, normalize: bool, max_seq_length: int = 256) -> None:
    """modules.json + 1_Pooling/config.json (+ 2_Normalize/) as sentence-transformers saves them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{m}": m == mode for m in
             ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags,
                                                                   "include_prompt": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"sentence_transformers": "3.0.1"}, "prompts": {}, "default_prompt_name": None,
         "similarity_fn_name": "cosine"}))


def load_spec(folder: Path) -> LoadSpec:
    return LoadSpec(folder=folder, hf_config=AutoConfig.from_pretrained(str(folder)),
                    model_config=ModelConfig(model=str(folder)), dtype=torch.float32,
                    tokenizer=AutoTokenizer.from_pretrained(str(folder)))


def sample_inputs(tokenizer, first_id: int | None, avoid: set[int], seed: int = 0) -> list[list[int]]:
    """Two real tokenizations plus random sequences of LENGTHS (starting with ``first_id``)."""
    rng = random.Random(seed)
    texts = [tokenizer(t).input_ids for t in CORPUS[:2]]
    ids = [i for i in range(len(tokenizer)) if i not in avoid]
    seqs = []
    for n in LENGTHS:
        head = [first_id] if first_id is not None else []
        seqs.append((head + [rng.choice(ids) for _ in range(n)])[:n])
    return texts + seqs


def packed_hidden(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    """Run all sequences as one packed batch; split the [T, H] result back per sequence."""
    batch = pack_token_ids(seqs)
    with torch.no_grad():
        hidden = model.forward_hidden(batch.input_ids, batch.positions, batch.meta())
    cu = batch.cu_seqlens.tolist()
    return [hidden[cu[i]:cu[i + 1]] for i in range(len(seqs))]


def alone_hidden(model, seq: list[int]) -> torch.Tensor:
    return packed_hidden(model, [seq])[0]


def hf_padded(hf_model, seqs: list[list[int]], pad_id: int):
    """transformers' own right-padded forward: (output, [B, L] mask)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out, mask


def assert_packed_parity(model, hf_model, seqs, pad_id):
    """Packed == alone (1e-5) and == HF padded hidden states (1e-4); returns the packed pieces."""
    pieces = packed_hidden(model, seqs)
    out, _ = hf_padded(hf_model, seqs, pad_id)
    ref = out.hidden_states[-1]  # [B, L, H]
    for i, (seq, got) in enumerate(zip(seqs, pieces)):
        assert got.shape == (len(seq), model.traits.hidden_size)
        torch.testing.assert_close(got, alone_hidden(model, seq), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, ref[i, :len(seq)], atol=1e-4, rtol=0, msg=f"sequence {i}")
    return pieces, out


def test_bert_classifier_packed_equals_alone_and_transformers(tmp_path):
    folder = bert_checkpoint(tmp_path / "bert-cls", cls_head=True)
    spec = load_spec(folder)
    assert adapter_name(spec) == "encoders"
    model = load_model(spec)
    t = model.traits
    assert (t.is_causal, t.supports_packing, t.num_labels, t.labels, t.activation) == \
        (False, True, 3, ("neg", "neu", "pos"), "softmax")
    assert t.default_pooling[PoolingTask.CLASSIFY] == t.default_pooling[PoolingTask.EMBED] == PoolingType.CLS
    assert t.default_pooling[PoolingTask.TOKEN_CLASSIFY] == t.default_pooling[PoolingTask.TOKEN_EMBED] == PoolingType.ALL
    assert PoolingTask.CLASSIFY in t.tasks()

    tok = spec.tokenizer
    seqs = sample_inputs(tok, tok.cls_token_id, avoid={tok.pad_token_id})
    hf = transformers.BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    pieces, out = assert_packed_parity(model, hf, seqs, tok.pad_token_id)
    # CLS pooling then score() (BERT pooler dense+tanh, then classifier) == HF logits.
    cls_rows = torch.stack([p[0] for p in pieces])  # [N, H]
    with torch.no_grad():
        logits = model.score(cls_rows)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=0)
    assert not torch.allclose(logits, hf.classifier(cls_rows), atol=1e-3)  # the pooler really ran
    assert [type(m).__name__ for m in model.head_modules()] == ["BertPooler", "Linear"]


def test_bert_bf16_backbone_with_float32_head(tmp_path):
    """The runner keeps head_modules() in float32 under a bf16 backbone: the pooler must not
    also run inside the backbone, and logits stay close to the float32 model's."""
    folder = bert_checkpoint(tmp_path / "bert-bf16", cls_head=True)
    spec = load_spec(folder)
    ref = load_model(spec)
    model = load_model(LoadSpec(folder, spec.hf_config, spec.model_config, torch.bfloat16, spec.tokenizer))
    for module in model.head_modules():
        module.to(torch.float32)
    tok = spec.tokenizer
    seqs = sample_inputs(tok, tok.cls_token_id, avoid={tok.pad_token_id})
    cls = lambda m: torch.stack([p[0] for p in packed_hidden(m, seqs)])  # noqa: E731
    with torch.no_grad():
        hidden = cls(model)
        assert hidden.dtype == torch.bfloat16
        logits = model.score(hidden.float())
        torch.testing.assert_close(logits, ref.score(cls(ref)), atol=5e-2, rtol=0)


def test_bert_model_is_embed_only(tmp_path):
    folder = bert_checkpoint(tmp_path / "bert", cls_head=False)
    spec = load_spec(folder)
    model = load_model(spec)
    assert model.traits.num_labels == 0
    assert PoolingTask.CLASSIFY not in model.traits.tasks() and PoolingTask.EMBED in model.traits.tasks()
    with pytest.raises(NotImplementedError):
        model.score(torch.zeros(1, 32))
    tok = spec.tokenizer
    seqs = sample_inputs(tok, tok.cls_token_id, avoid={tok.pad_token_id}, seed=1)
    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    assert_packed_parity(model, hf, seqs, tok.pad_token_id)


@pytest.mark.parametrize("mode,normalize,expected", [("mean_tokens", True, PoolingType.MEAN),
                                                     ("cls_token", False, PoolingType.CLS)])
def test_sentence_transformers_pooling(tmp_path, mode, normalize, expected):
    folder = bert_checkpoint(tmp_path / "st", cls_head=False, seed=2)
    write_sentence_transformers(folder, mode, normalize)
    spec = load_spec(folder)
    model = load_model(spec)
    t = model.traits
    assert (t.default_pooling[PoolingTask.EMBED], t.normalize, t.max_position_embeddings) == (expected, normalize, 256)
    assert t.default_pooling[PoolingTask.CLASSIFY] == PoolingType.CLS  # architecture default, unused (no head)

    tok = spec.tokenizer
    seqs = sample_inputs(tok, tok.cls_token_id, avoid={tok.pad_token_id}, seed=3)
    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    pieces, out = assert_packed_parity(model, hf, seqs, tok.pad_token_id)
    # What the traits imply, from packed rows, vs sentence-transformers' maths on HF's padded output.
    ours = torch.stack([p.mean(0) if t.default_pooling[PoolingTask.EMBED] == PoolingType.MEAN else p[0]
                        for p in pieces])
    ours = F.normalize(ours, dim=-1) if t.normalize else ours
    _, mask = hf_padded(hf, seqs, tok.pad_token_id)
    last = out.hidden_states[-1]
    if mode == "mean_tokens":  # masked mean over real tokens, as ST's Pooling does
        ref = (last * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:
        ref = last[:, 0]
    ref = F.normalize(ref, p=2, dim=1) if normalize else ref
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    if normalize:
        torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(seqs)), atol=1e-5, rtol=0)


def test_sentence_transformers_unsupported_module_is_refused(tmp_path):
    folder = bert_checkpoint(tmp_path / "st-dense", cls_head=False)
    write_sentence_transformers(folder, "mean_tokens", True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EngineError, match="Dense"):
        load_model(load_spec(folder))
    (folder / "modules.json").write_text(json.dumps(modules[:2]))
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(EngineError, match="pooling"):
        load_model(load_spec(folder))


def test_roberta_classifier_offsets_positions(tmp_path):
    """RoBERTa numbers positions from pad_token_id + 1 and has its own dense+tanh+out_proj head."""
    from rewardserve.engine.demo import build_tokenizer

    folder = tmp_path / "roberta"
    build_tokenizer(folder, specials=("<s>", "<pad>", "</s>", "<unk>", "<mask>"), chat_template=None,
                    bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512)
    tok = AutoTokenizer.from_pretrained(str(folder))
    config = transformers.RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=0,
                                        eos_token_id=2, type_vocab_size=1, num_labels=1,
                                        **{**SMALL, "max_position_embeddings": 514})
    config.architectures = ["RobertaForSequenceClassification"]
    torch.manual_seed(4)
    transformers.RobertaForSequenceClassification(config).save_pretrained(str(folder))
    spec = load_spec(folder)
    model = load_model(spec)
    assert (model.traits.num_labels, model.traits.activation, model.traits.max_position_embeddings) == (1, "sigmoid", 512)
    seqs = sample_inputs(tok, tok.bos_token_id, avoid={tok.pad_token_id}, seed=5)
    hf = transformers.RobertaForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    pieces, out = assert_packed_parity(model, hf, seqs, tok.pad_token_id)
    with torch.no_grad():
        logits = model.score(torch.stack([p[0] for p in pieces]))
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=0)


def test_decoder_sentence_transformers_runs_causal_with_last_token(tmp_path):
    """A decoder folder with modules.json (Qwen3-Embedding style) is routed here: causal, LAST."""
    from rewardserve.engine.demo import build_tokenizer

    folder = tmp_path / "qwen3-embed"
    build_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    config = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=1024, pad_token_id=tok.pad_token_id)
    config.architectures = ["Qwen3Model"]
    torch.manual_seed(6)
    transformers.Qwen3Model(config).save_pretrained(str(folder))
    write_sentence_transformers(folder, "lasttoken", True, max_seq_length=1024)
    spec = load_spec(folder)
    assert adapter_name(spec) == "encoders"
    model = load_model(spec)
    t = model.traits
    assert (t.is_causal, t.default_pooling[PoolingTask.EMBED], t.normalize, t.num_labels) == \
        (True, PoolingType.LAST, True, 0)
    seqs = sample_inputs(tok, None, avoid={tok.pad_token_id}, seed=7)
    hf = transformers.Qwen3Model.from_pretrained(str(folder), attn_implementation="eager").eval()
    pieces, out = assert_packed_parity(model, hf, seqs, tok.pad_token_id)
    # LAST + normalize from packed rows == the last real token of HF's right-padded output.
    ours = F.normalize(torch.stack([p[-1] for p in pieces]), dim=-1)
    last = out.hidden_states[-1][torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
    torch.testing.assert_close(ours, F.normalize(last, dim=-1), atol=1e-4, rtol=0)
