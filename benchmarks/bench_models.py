"""Random-weight checkpoints with real shapes, in the hub's on-disk layout, and their FLOP counts.

``build`` writes config.json as the hub repo has it (legacy rope keys included), sharded
safetensors + index (via transformers' save_pretrained) and a small BPE tokenizer (inputs are
token ids, so its vocabulary does not matter). Weights are drawn on the GPU (normal, std 0.02).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

GEMMA2 = {  # what the two Gemma2 shapes share (the hub configs' keys)
    "architectures": ["Gemma2ForSequenceClassification"], "model_type": "gemma2", "head_dim": 256,
    "vocab_size": 256000, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    "torch_dtype": "bfloat16", "num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
    "initializer_range": 0.02,
}
SHAPES = {
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3",
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None, "tie_word_embeddings": True,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 28, "bos_token_id": 151643, "eos_token_id": 151645,
        "pad_token_id": 151643, "torch_dtype": "bfloat16", "num_labels": 1,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "initializer_range": 0.02,
    },
    "llama-3.1-8b": {
        "architectures": ["LlamaForSequenceClassification"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "pad_token_id": 128004,
        "torch_dtype": "bfloat16", "num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        "initializer_range": 0.02,
    },
    # Gemma2 (google/gemma-2-2b and -9b shapes): 256-wide heads, attention logits soft-capped at 50,
    # a 4096-token window on every other layer (transformers' default layer_types), GELU MLP
    "gemma2-2b": {**GEMMA2, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                  "num_attention_heads": 8, "num_key_value_heads": 4},
    "gemma2-9b": {**GEMMA2, "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                  "num_attention_heads": 16, "num_key_value_heads": 8},
    # a CPU smoke-test shape (same code path, tiny numbers)
    "tiny": {
        "architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32", "num_labels": 1,
        "initializer_range": 0.02,
    },
}
SAFE_ID_LIMIT = {"qwen3-0.6b": 151000, "llama-3.1-8b": 128000, "gemma2-2b": 255000, "gemma2-9b": 255000,
                 "tiny": 1000}  # sampled ids stay below
SHARD = {"qwen3-0.6b": "5GB", "llama-3.1-8b": "5GB", "gemma2-2b": "5GB", "gemma2-9b": "5GB", "tiny": "5GB"}


def build(name: str, root: Path, device: str, dtype: torch.dtype):
    """Write the checkpoint under root/name (reused when present); returns (folder, hf model on device)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rewardserve.engine.demo import build_tokenizer

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    hub_config = dict(SHAPES[name])
    (folder / "config.json").write_text(json.dumps(hub_config, indent=2))
    config = AutoConfig.from_pretrained(str(folder))
    start = time.monotonic()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.eval()
    if not (folder / "tokenizer.json").exists():
        build_tokenizer(folder)
    model.save_pretrained(str(folder), max_shard_size=SHARD[name])
    (folder / "config.json").write_text(json.dumps(hub_config, indent=2))  # keep the hub's own layout
    seconds = time.monotonic() - start
    return folder, model, seconds


def linear_params_per_layer(c: dict) -> int:
    h, hd = c["hidden_size"], c["head_dim"]
    attn = h * c["num_attention_heads"] * hd * 2 + h * c["num_key_value_heads"] * hd * 2  # q, o, k, v
    return attn + 3 * h * c["intermediate_size"]  # gate, up, down


def forward_flops(name: str, lengths) -> float:
    """Useful FLOPs of one forward over sequences of these lengths (no padding counted).

    Linear layers: 2 * params * tokens. Causal attention per sequence of n tokens and layer:
    QK^T and PV over n(n+1)/2 query-key pairs each, 2 FLOPs per multiply-add → 2*H*D*n(n+1).
    A sliding-window layer (Gemma2: every other one) counts only the pairs inside its window.
    The score head runs on one row per sequence and the embedding is a lookup: not counted.
    """
    c = SHAPES[name]
    layers, heads, hd = c["num_hidden_layers"], c["num_attention_heads"], c["head_dim"]
    lengths = list(lengths)
    tokens = sum(lengths)
    window = c.get("sliding_window") if c.get("model_type") == "gemma2" else None
    windowed = layers // 2 if window else 0  # layer_types: sliding on even layers, full on odd ones
    full_pairs = sum(n * (n + 1) // 2 for n in lengths)
    attn = 4 * heads * hd * ((layers - windowed) * full_pairs + windowed * sum(window_pairs(n, window) for n in lengths))
    return float(layers * 2 * linear_params_per_layer(c) * tokens + attn)


def window_pairs(n: int, window: int | None) -> int:
    """Causal query-key pairs of one sequence of n tokens when keys need q - k < window."""
    if not window or n <= window:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def pad_id(name: str) -> int:
    return int(SHAPES[name]["pad_token_id"])
