"""Helpers shared by the engine tests (a module on tests/'s path, imported as ``engine_testlib``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rewardserve.engine.attention import VarlenMeta


@dataclass
class ReferencePacking:
    """Sequences concatenated with no padding, built the obvious way: the reference the engine's
    staging row is checked against, and the input of model-level forward tests.

    input_ids, positions: [T] int64 (positions restart at 0 per sequence); cu_seqlens: [n + 1] int32.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def meta(self) -> VarlenMeta:
        return VarlenMeta(self.cu_seqlens, self.max_seqlen)


def pack_token_ids(sequences: list[list[int]]) -> ReferencePacking:
    """Concatenate token id lists into one ReferencePacking (on the CPU)."""
    lengths = [len(s) for s in sequences]
    input_ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]) if lengths else input_ids
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return ReferencePacking(input_ids, positions, cu_seqlens, max(lengths, default=0))


def wordpiece_tokenizer(folder: Path, corpus: Sequence[str], model_max_length: int):
    """Train a real WordPiece tokenizer on ``corpus`` and save it as bert-base-uncased is saved:
    ``[CLS] a [SEP]`` for one text, ``[CLS] a [SEP] b [SEP]`` with segment ids 0/1 for a pair,
    and a ``vocab.txt`` beside ``tokenizer.json``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(list(corpus), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials,
                                                                    show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                          model_max_length=model_max_length)
    fast.save_pretrained(str(folder))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
    return fast
