"""Helpers for decoder adapter tests: tiny hub-layout checkpoints, packed runs, padded references.

A checkpoint folder holds what the hub repo holds: config.json (architectures, model_type,
torch_dtype), model.safetensors or model.safetensors.index.json + shards, and the tokenizer
files written by ``demo.build_tokenizer``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine_testlib import pack_token_ids
from rewardserve.engine.config import ModelConfig
from rewardserve.engine.loader import speed_up_packed
from rewardserve.engine.models.registry import LoadSpec, load_model
from rewardserve.engine.models.weights import INDEX, read_hf_config

VOCAB = 400
PAD_ID = 0          # "<|endoftext|>" in the demo tokenizer; never used inside test inputs
STEP_TAG_ID = 3     # "<extra_0>" in the demo tokenizer
# Mixed lengths: 1 token, shorter and longer than the sliding window (16), up to 300.
LENGTHS = (1, 2, 7, 16, 17, 33, 64, 150, 255, 300)
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             initializer_range=0.1, pad_token_id=PAD_ID, bos_token_id=PAD_ID, eos_token_id=PAD_ID)


def copy_tokenizer(src: Path, folder: Path) -> None:
    """Put the session's tokenizer files into a checkpoint folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        shutil.copy(file, folder / file.name)


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def save_tensors(folder: Path, state: dict[str, torch.Tensor], shards: int = 1) -> None:
    """Write ``state`` as model.safetensors, or as ``shards`` files + the hub's index.json."""
    state = {k: v.contiguous() for k, v in state.items()}
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def load(folder: Path, *, convert: str = "auto", overrides: dict | None = None, speed_ups: bool = True):
    """Load through the registry exactly as the engine does (fp32, CPU), with the loader's rotary
    tables and fused projections unless ``speed_ups`` is False (the unchanged transformers model)."""
    from transformers import AutoTokenizer

    spec = LoadSpec(folder=folder, hf_config=read_hf_config(folder),
                    model_config=ModelConfig(model=str(folder), convert=convert), dtype=torch.float32,
                    tokenizer=AutoTokenizer.from_pretrained(str(folder)), pooler_overrides=overrides or {})
    model = load_model(spec)
    if speed_ups:
        speed_up_packed(model, model.traits.max_position_embeddings, torch.float32)
    return model


def random_inputs(seed: int = 0, lengths=LENGTHS, step_every: int = 0) -> list[list[int]]:
    """Token id lists (never the pad id); with ``step_every``, a step tag every that many tokens and last."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for n in lengths:
        ids = torch.randint(4, VOCAB, (n,), generator=gen).tolist()
        if step_every:
            for i in range(step_every - 1, n, step_every):
                ids[i] = STEP_TAG_ID
            ids[-1] = STEP_TAG_ID
        seqs.append(ids)
    return seqs


@torch.no_grad()
def packed_hidden(model, seqs: list[list[int]]) -> torch.Tensor:
    """All sequences in one packed forward → hidden [total_tokens, H]."""
    batch = pack_token_ids(seqs)
    return model.forward_hidden(batch.input_ids, batch.positions, batch.meta())


@torch.no_grad()
def solo_hidden(model, seqs: list[list[int]]) -> torch.Tensor:
    """Each sequence in its own forward, concatenated → [total_tokens, H]."""
    return torch.cat([packed_hidden(model, [s]) for s in seqs])


def last_rows(seqs: list[list[int]]) -> torch.Tensor:
    """Row of each sequence's last token in the packed layout (LAST pooling) → [N]."""
    ends = torch.cumsum(torch.tensor([len(s) for s in seqs]), 0)
    return ends - 1


def step_rows(seqs: list[list[int]], tag: int) -> torch.Tensor:
    """Rows holding the step tag (STEP pooling) in the packed layout → [num_steps]."""
    flat = torch.tensor([t for s in seqs for t in s])
    return torch.nonzero(flat == tag).flatten()


def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, S] (pad id) and attention mask [B, S], for transformers references."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def unpad(per_token: torch.Tensor, seqs: list[list[int]]) -> torch.Tensor:
    """[B, S, ...] right-padded per-token values → packed [total_tokens, ...]."""
    return torch.cat([per_token[i, :len(s)] for i, s in enumerate(seqs)])


@torch.no_grad()
def check_packed_vs_solo(model, seqs, rows: torch.Tensor) -> torch.Tensor:
    """Packed hidden equals per-sequence hidden (≤ 1e-5); returns score(packed hidden[rows])."""
    hidden = packed_hidden(model, seqs)
    alone = solo_hidden(model, seqs)
    assert hidden.shape == (sum(map(len, seqs)), model.traits.hidden_size)
    assert (hidden - alone).abs().max().item() <= 1e-5
    scores = model.score(hidden[rows])
    assert (scores - model.score(alone[rows])).abs().max().item() <= 1e-5
    return scores


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"
