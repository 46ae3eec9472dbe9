"""Score throughput on a reranker shape: our engine's Score vs transformers' padded pairs.

The shape is bge-reranker-v2-m3's (XLM-RoBERTa large cross-encoder, one label; random weights,
hub layout). The workload is Q queries of ~24 tokens, each against D documents with lognormal
lengths (median ~180 tokens), given as token ids. The engine builds each pair with the
tokenizer's pair template; transformers gets exactly those pair ids, right-padded in batches
(arrival order and length-sorted), so both read the same tokens. Reported: pair tokens/s.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

SHAPES = {
    "bge-reranker-v2-m3": {
        "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "vocab_size": 250002, "max_position_embeddings": 8194, "type_vocab_size": 1, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        "position_embedding_type": "absolute", "torch_dtype": "float32", "num_labels": 1,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "initializer_range": 0.02,
    },
    "tiny-reranker": {  # CPU smoke test of the same path
        "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 1000, "max_position_embeddings": 1026, "type_vocab_size": 1, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32", "num_labels": 1, "initializer_range": 0.02,
    },
}
WORKLOAD = {"bge-reranker-v2-m3": (64, 32), "tiny-reranker": (4, 8)}  # (queries, documents per query)


def build(name: str, root: Path, device: str, dtype: torch.dtype):
    """Write the checkpoint (hub layout, demo BPE tokenizer); returns (folder, transformers model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rewardserve.engine.demo import build_tokenizer

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SHAPES[name], indent=2))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(folder)), dtype=dtype)
    model.eval()
    if not (folder / "tokenizer.json").exists():
        build_tokenizer(folder)
    model.save_pretrained(str(folder))
    return folder, model


def workload(name: str, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """(query ids, [document ids]) per query; ids stay clear of the special ids 0..3."""
    rng = random.Random(seed)
    queries, docs = WORKLOAD[name]
    limit = min(SHAPES[name]["vocab_size"], 1000 if name.startswith("tiny") else 250000)
    ids = lambda n: [rng.randrange(4, limit) for _ in range(n)]  # noqa: E731
    doc_len = lambda: max(8, min(500, int(rng.lognormvariate(5.2, 0.5))))  # noqa: E731
    return [(ids(rng.randint(16, 32)), [ids(doc_len()) for _ in range(docs)]) for _ in range(queries)]


def run(name: str, root: Path, device: str, max_tokens: int = 16384, compile: bool = True) -> dict:
    """Engine Score vs transformers on the same pairs; returns tokens/s of each."""
    import bench_engine
    import bench_hf

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    folder, hf = build(name, root, device, dtype)
    load = workload(name)
    engine, info = bench_engine.make_engine(folder, device, "bfloat16" if device == "cuda" else "float32",
                                            compile and device == "cuda", device == "cuda", max_tokens)
    pairs = [it.token_ids for q, docs in load for it in engine.core.prepare_score(q, docs, _params()).items]
    tokens = sum(map(len, pairs))
    for q, docs in load[:2]:  # warm the shapes
        engine.score(q, docs)
    _sync(device)
    start = time.perf_counter()
    for q, docs in load:
        engine.score(q, docs)
    _sync(device)
    seconds = time.perf_counter() - start
    out = {"pairs": len(pairs), "tokens": tokens, "mean_pair_tokens": tokens / len(pairs), "engine": info,
           "engine_score": {"seconds": seconds, "tok_s": tokens / seconds, "pairs_s": len(pairs) / seconds}}
    del engine
    pad = SHAPES[name]["pad_token_id"]
    for order in ("fifo", "sorted"):
        out[f"hf_{order}"] = bench_hf.run_padded(hf, pairs, 32, pad, order == "sorted", device)
    out["speedup_vs_hf_sorted"] = out["engine_score"]["tok_s"] / out["hf_sorted"]["tok_s"]
    return out


def _params():
    from rewardserve.engine.score import ScoreParams

    return ScoreParams()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
