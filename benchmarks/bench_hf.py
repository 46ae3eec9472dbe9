"""transformers baselines: right-padded batches of a fixed size, in arrival order or length-sorted."""
from __future__ import annotations

import time

import torch


def padded_batches(seqs: list[list[int]], batch_size: int, sort: bool) -> list[list[int]]:
    """Indices of each batch (sorted by length, longest first, when ``sort``)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort else list(range(len(seqs)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def run_padded(model, seqs: list[list[int]], batch_size: int, pad_id: int, sort: bool, device: str) -> dict:
    """Score every sequence the way a transformers user would; returns timing and padding."""
    batches = padded_batches(seqs, batch_size, sort)
    _forward(model, [seqs[i] for i in batches[0]], pad_id, device)  # warm-up (not timed)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    padded = 0
    start = time.perf_counter()
    for batch in batches:
        scores = _forward(model, [seqs[i] for i in batch], pad_id, device)  # [B, 1]
        scores.float().cpu()  # the caller reads its scores: one sync per batch
        padded += len(batch) * max(len(seqs[i]) for i in batch)
    seconds = time.perf_counter() - start
    tokens = sum(map(len, seqs))
    out = {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "padded_tokens": padded,
           "padding_fraction": 1 - tokens / padded, "batch_size": batch_size, "num_batches": len(batches)}
    if device == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _forward(model, seqs: list[list[int]], pad_id: int, device: str) -> torch.Tensor:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, num_labels]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
