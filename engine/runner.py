"""ModelRunner: the only owner of CUDA state. PackedBatch → per-item pooled outputs.

Phases per batch: ``forward`` (packed backbone, [T, hidden]) → ``gather`` (pooled rows only,
MEAN averaged per sequence) → head on pooled rows → one device→host copy → ``finish`` per item
on the CPU. A CUDA out-of-memory error splits the batch in two and retries each half.
"""
from __future__ import annotations

import logging
import time

import torch

from rewardserve.engine import attention
from rewardserve.engine.batch import PackedBatch, pack_token_ids
from rewardserve.engine.models.base import PoolingModel
from rewardserve.engine.pooling import finish
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.types import PoolingType

log = logging.getLogger(__name__)


class ItemFailed(Exception):
    """A single item could not be computed (e.g. out of memory on its own)."""


class ModelRunner:
    """Runs packed batches of WorkItems on one device."""

    def __init__(self, model: PoolingModel, device: torch.device, backend: str, head_dtype: torch.dtype | None):
        self.model = model.to(device)
        self.device = device
        self.backend = backend
        self.head_dtype = head_dtype
        for module in model.head_modules():
            if head_dtype is not None:
                module.to(head_dtype)  # fp32 head keeps rewards exact under a bf16 backbone
        attention.set_backend(backend)
        self.num_oom_splits = 0

    @torch.inference_mode()
    def execute(self, items: list[WorkItem]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Compute every item; returns (data, logits) per item in order. OOM splits the batch."""
        batch = pack_token_ids([it.token_ids for it in items], items, pin=self.device.type == "cuda")
        try:
            return self._run(batch)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise ItemFailed("out of memory on a single sequence") from None
            self.num_oom_splits += 1
            log.warning("CUDA out of memory on a batch of %d sequences; splitting it", len(items))
            torch.cuda.empty_cache() if self.device.type == "cuda" else None
            half = len(items) // 2
            return self.execute(items[:half]) + self.execute(items[half:])

    def _run(self, batch: PackedBatch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        batch = batch.to(self.device, non_blocking=True)
        hidden = self.model.forward_hidden(batch.input_ids, batch.positions, batch.meta())  # [T, H]
        rows, counts = self.gather(hidden, batch)                                        # [N, H]
        outputs = self.apply_heads(rows, counts, batch.items)
        host = [o.float().to("cpu", non_blocking=True) for o in outputs]
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the one host sync per batch
        return [finish(rows_i, item.pooling) for rows_i, item in zip(host, batch.items)]

    def gather(self, hidden: torch.Tensor, batch: PackedBatch) -> tuple[list[torch.Tensor], list[int]]:
        """Pooled rows per item: [num_pooled, H] (MEAN: the average, [1, H])."""
        starts, total = [], 0
        for item in batch.items:  # offsets from host-side lengths: no device sync
            starts.append(total)
            total += item.num_tokens
        flat = []
        for item, start in zip(batch.items, starts):
            flat.extend(start + p for p in item.positions)
        index = torch.tensor(flat, dtype=torch.long).to(hidden.device, non_blocking=True)
        pooled = hidden.index_select(0, index)
        rows, offset = [], 0
        for item, start in zip(batch.items, starts):
            n = len(item.positions)
            chunk = pooled[offset:offset + n]
            offset += n
            if item.pooling.pooling_type == PoolingType.MEAN:
                chunk = chunk.mean(0, keepdim=True)
            rows.append(chunk)
        return rows, [r.shape[0] for r in rows]

    def apply_heads(self, rows: list[torch.Tensor], counts: list[int], items: list[WorkItem]) -> list[torch.Tensor]:
        """Run the score head once over every classify item's pooled rows."""
        head_idx = [i for i, it in enumerate(items) if it.pooling.uses_head]
        if not head_idx:
            return rows
        stacked = torch.cat([rows[i] for i in head_idx])  # [N_head_rows, H]
        if self.head_dtype is not None:
            stacked = stacked.to(self.head_dtype)
        logits = self.model.score(stacked)                # [N_head_rows, L]
        out = list(rows)
        for i, part in zip(head_idx, logits.split([counts[i] for i in head_idx])):
            out[i] = part
        return out

    def warm_up(self, max_tokens: int) -> float:
        """One forward of a dummy batch so kernels and allocator are ready; returns seconds."""
        start = time.monotonic()
        ids = [[0] * max(1, min(max_tokens, 256))]
        with torch.inference_mode():
            batch = pack_token_ids(ids).to(self.device)
            self.model.forward_hidden(batch.input_ids, batch.positions, batch.meta())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.monotonic() - start
