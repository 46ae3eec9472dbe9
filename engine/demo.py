"""The built-in demo reward model: tiny, random weights, its own tokenizer and chat template.

Created locally on first use (no download) so ``rewardserve serve`` works on a fresh machine.
Its scores are meaningless. ``build_tokenizer`` is also what the tests use to give every tiny
checkpoint a real byte-level BPE tokenizer in the hub's on-disk layout.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>")
DEMO_VERSION = "1"

_CORPUS = """
The reward model reads a conversation and returns one score. A trainer sends many samples,
and the server packs them into one batch without padding. Step one: add the numbers. Step two:
check the answer. The answer is 42. Is this response helpful, honest and harmless? Yes or no.
def add(a, b):\n    return a + b\n# Python code with tabs\tand spaces, numbers 0123456789.
Questions and answers, assistants and users, systems and tools: good, bad, better, best.
"""


def build_tokenizer(folder: str | os.PathLike, *, specials: tuple[str, ...] = CHATML_SPECIALS,
                    chat_template: str | None = CHATML_TEMPLATE, vocab_size: int = 400,
                    bos_token: str | None = None, eos_token: str = "<|endoftext|>",
                    pad_token: str | None = "<|endoftext|>", model_max_length: int = 4096) -> None:
    """Train a small byte-level BPE and save it as a fast tokenizer (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    all_specials = list(dict.fromkeys([t for t in (*specials, bos_token, eos_token, pad_token) if t]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=all_specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos_token, eos_token=eos_token,
                                   pad_token=pad_token, model_max_length=model_max_length)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    if bos_token:  # post-processor that prepends BOS, as Llama tokenizers do
        _add_bos_post_processor(Path(folder), bos_token, fast.convert_tokens_to_ids(bos_token))


def _add_bos_post_processor(folder: Path, bos: str, bos_id: int) -> None:
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    path.write_text(json.dumps(data, ensure_ascii=False))


def demo_model_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the demo checkpoint lives (``$XDG_CACHE_HOME/rewardserve/demo-reward-v1``)."""
    root = Path(cache_root) if cache_root else Path.home() / ".cache"
    return root / "rewardserve" / f"demo-reward-v{DEMO_VERSION}"


def ensure_demo_model(cache_root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Create the demo reward model on first use and return its folder."""
    folder = demo_model_dir(cache_root)
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tmp)
    config = Qwen3Config(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096, num_labels=1, pad_token_id=0, eos_token_id=0,
                         id2label={0: "reward"}, label2id={"reward": 0}, tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen3ForSequenceClassification(config).save_pretrained(str(tmp))
    try:
        tmp.replace(folder)  # atomic: a concurrent first start sees all files or none
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def with_demo_model(config: Any, cache_root: str | os.PathLike | None, command: str, log: logging.Logger) -> Any:
    """``config`` (an EngineConfig) as is when it names a model; else pointed at the demo model
    (created on first use) with a loud warning naming ``command``'s --model option."""
    if config.model.model:
        return config
    folder = ensure_demo_model(cache_root)
    log.warning("no --model given: using the built-in DEMO reward model from %s. It has RANDOM weights, so its "
                "scores are meaningless. Use a real model with `%s --model DIR|HUB_ID`.", folder, command)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, model=str(folder)))

