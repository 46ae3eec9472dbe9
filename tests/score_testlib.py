"""Tiny Score checkpoints in the hub layout, shared by the engine and service Score tests.

- ``bert_cross_encoder``: BertForSequenceClassification with one label and two token types
  (as cross-encoder/ms-marco-MiniLM and bge-reranker-base ship), a real WordPiece tokenizer
  whose pair template is ``[CLS] A [SEP] B:1 [SEP]:1``.
- ``bert_embedder``: BertModel (no head) with the same tokenizer: CLS pooling, normalised.
- ``qwen3_reranker``: Qwen3ForCausalLM with the demo byte-level BPE and a Qwen3-style chat
  template (``enable_thinking=False`` closes an empty think block), served as Qwen3-Reranker is:
  ``--convert classify`` with ``classifier_from_token`` [no, yes] and ``from_2_way_softmax``.
"""
from __future__ import annotations

import json
from pathlib import Path

import engine_testlib
import torch
import transformers

from rewardserve.engine.demo import CHATML_SPECIALS, build_tokenizer

CORPUS = ["What is packing? Packed batches have no padding and restart positions per sequence.",
          "The reward model reads a conversation and returns one score for the response.",
          "A reranker orders documents by how well each one answers the query.",
          "Is this response helpful, honest and harmless? Yes or no."] * 4
BERT_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  type_vocab_size=2, initializer_range=0.2)
QWEN3_SIZES = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                   initializer_range=0.2, tie_word_embeddings=False, pad_token_id=0, bos_token_id=0,
                   eos_token_id=0)
NO_ID, YES_ID = 81, 92  # the reranker's [no, yes] rows of the LM head (ids of the tiny BPE)
RERANKER_POOLER = {"classifier_from_token": [NO_ID, YES_ID], "method": "from_2_way_softmax"}
# Qwen3's template, reduced to what the reranker prompt uses (system, user, generation prompt).
QWEN3_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}")


def wordpiece_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """A trained WordPiece tokenizer saved as bert-base-uncased's is (pair template with types)."""
    return engine_testlib.wordpiece_tokenizer(folder, CORPUS, model_max_length=128)


def _bert(folder: Path, cls: type, seed: int, num_labels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer(folder)
    config = transformers.BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=num_labels,
                                     **BERT_SIZES)
    config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    cls(config).save_pretrained(str(folder))
    return folder


def bert_cross_encoder(folder: Path, seed: int = 0, num_labels: int = 1) -> Path:
    """A one-label BERT cross-encoder checkpoint (token types used: type_vocab_size 2)."""
    return _bert(folder, transformers.BertForSequenceClassification, seed, num_labels)


def bert_embedder(folder: Path, seed: int = 1) -> Path:
    """A BertModel checkpoint (no head): Score runs as cosine similarity of CLS embeddings."""
    return _bert(folder, transformers.BertModel, seed)


def qwen3_reranker(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen3ForCausalLM with a Qwen3-style chat template (serve with RERANKER_POOLER)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder, specials=CHATML_SPECIALS, chat_template=QWEN3_TEMPLATE)
    config = transformers.Qwen3Config(**QWEN3_SIZES)
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    transformers.Qwen3ForCausalLM(config).save_pretrained(str(folder))
    return folder


def reranker_pooler_config() -> str:
    """The ``--pooler-config`` that serves ``qwen3_reranker`` as a yes/no reranker."""
    return json.dumps(RERANKER_POOLER)
