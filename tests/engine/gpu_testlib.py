"""What the GPU tests share: tiny hub-layout checkpoints of each decoder family, the engine's
modes, the error measures, the JSON record and the multi-GPU tests' Llama (tests/engine is on sys.path: ``from gpu_testlib
import ...``). Nothing here needs CUDA to import; transformers is imported by the builders."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

WINDOW = 64
SOFTCAP = 5.0  # Gemma2's attention logit cap; small enough to bend these random weights' scores
SIZES = dict(vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.1, pad_token_id=0,
             bos_token_id=0, eos_token_id=0, num_labels=1)
MODES = {"eager": dict(compile=False, cuda_graphs=False), "compile+graphs": dict(compile=True, cuda_graphs=True)}


def decoder_builders() -> dict[str, Callable[[], torch.nn.Module]]:
    """Seq-cls models of SIZES: Llama, Qwen2 (layer 0 windowed), Qwen3, Mistral (windowed), Gemma2
    (soft-capped; layer 0 windowed, layer 1 global: transformers' default layer_types for two)."""
    import transformers as tf

    c = dict(SIZES)
    return {
        "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**c)),
        "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(
            **c, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
        "qwen3": lambda: tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**c, head_dim=64)),
        "mistral": lambda: tf.MistralForSequenceClassification(tf.MistralConfig(
            **c, head_dim=64, sliding_window=WINDOW)),
        "gemma2": lambda: tf.Gemma2ForSequenceClassification(tf.Gemma2Config(
            **c, head_dim=256, sliding_window=WINDOW, attn_logit_softcapping=SOFTCAP, query_pre_attn_scalar=256)),
    }


def serving_torch_settings() -> None:
    """The process-wide torch settings every entry point applies (``torch_setup.configure``): a
    GPU test that builds ``Engine(EngineConfig(...))`` directly skips them, and then runs with
    dynamo's defaults: duck shaping (extra recompiles) and a recompile limit of 8 for the one
    compiled function all engines of the process share, after which dynamo silently runs the
    forward eagerly (the prefix parity record of 2026-12-02: Mistral and Gemma2's compile+graphs
    results equal their eager ones bit for bit, Qwen3's compared a compiled forward with an eager
    one)."""
    from rewardserve.engine import torch_setup

    torch_setup.configure(None)


def save_checkpoints(tmp_path_factory, builders: dict[str, Callable[[], torch.nn.Module]]) -> dict[str, Path]:
    """Each builder's model (seed 0) and the test tokenizer saved in its own folder: name -> folder."""
    from rewardserve.engine.demo import build_tokenizer

    out = {}
    for name, build in builders.items():
        folder = tmp_path_factory.mktemp(name)
        build_tokenizer(folder)
        torch.manual_seed(0)
        build().save_pretrained(str(folder))
        out[name] = folder
    return out


def llama_on_one_gpu(folder: Path, lengths: Sequence[int]) -> tuple[list[list[int]], list[torch.Tensor]]:
    """The multi-GPU tests' model and reference: a bf16 Llama seq-cls saved in folder (head_dim 64:
    the Triton kernel's path; GQA, 8 query / 4 kv heads to split over ranks), random inputs of
    the given lengths, and their classify scores on one GPU ([1] each)."""
    import transformers as tf

    from rewardserve.engine.demo import build_tokenizer
    from rewardserve.engine.engine import Engine

    build_tokenizer(folder)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=400, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024, num_labels=1,
                         pad_token_id=0)
    tf.LlamaForSequenceClassification(cfg).to(torch.bfloat16).save_pretrained(str(folder))
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 400, (n,), generator=gen).tolist() for n in lengths]
    with Engine.from_model(str(folder), device="cuda", dtype="bfloat16") as one:
        return seqs, [r.data for r in one.encode(seqs, task="classify")]


def _flat(x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    parts = [x] if isinstance(x, torch.Tensor) else x
    return torch.cat([t.reshape(-1) for t in parts]).float()


def rel_l2(got: torch.Tensor | Sequence[torch.Tensor], want: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """‖got − want‖ / ‖want‖ over every element (lists: concatenated, any shapes)."""
    a, b = _flat(got), _flat(want)
    return float((a - b).norm() / b.norm())


def max_abs(got: torch.Tensor | Sequence[torch.Tensor], want: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """max |got − want| / max(1, max |want|): scores' error, relative only when they are large."""
    a, b = _flat(got), _flat(want)
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def recorder(results: dict):
    """An autouse fixture (assign it to a module-level name) that writes results to
    REWARDSERVE_PARITY_JSON, when set, after every test: a run cut short keeps what it measured."""
    @pytest.fixture(autouse=True)
    def _record():
        yield
        path = os.environ.get("REWARDSERVE_PARITY_JSON")
        if path:
            results["device"] = torch.cuda.get_device_name()
            results["torch"] = torch.__version__
            with open(path, "w") as f:
                json.dump(results, f, indent=1)
    return _record
